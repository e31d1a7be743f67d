"""``genlip-eval report`` names cells so that two result directories are never one cell: ``A/synth`` and
``B/synth`` compare as two cells with their real difference; duplicate names and a cell compared with itself are
errors; sample counts print as integers."""

import csv
import json
import os
import sys
from pathlib import Path

import pytest

from eval.report import compare, load_cells, write_report
from eval.suites import SUITES, averages
from tests.cli import run_cli

BIN = Path(sys.executable).parent


def _cell(d: Path, chart_correct: int, n: int = 20, name: str | None = None, constant: bool = False) -> Path:
    """A result directory as ``genlip-eval run`` writes it: scores.json and lmms-eval's per-sample logs."""
    samples = d / "raw" / "m"
    samples.mkdir(parents=True)
    per = {"genlip_synth_docvqa": ("anls", [1.0] * (n // 2) + [0.0] * (n - n // 2)),
           "genlip_synth_chartqa": ("relaxed_overall", [1.0] * chart_correct + [0.0] * (n - chart_correct))}
    for task, (key, vals) in per.items():
        (samples / f"x_samples_{task}.jsonl").write_text("\n".join(
            json.dumps({"doc_id": i, key: v, "filtered_resps": ["4" if constant else f"answer {i}"]})
            for i, v in enumerate(vals)))
    bench = {"SynthDoc": 50.0, "SynthChart": 100.0 * chart_correct / n, "SynthCap": 10.0}
    cell = {"suite": "synth", "benchmarks": bench, "averages": averages(SUITES["synth"], bench),
            "samples_dir": str(samples), "limit": n}
    if name:
        cell["name"] = name
    (d / "scores.json").write_text(json.dumps(cell))
    return d


def test_same_leaf_directories_are_two_cells_with_their_real_difference(tmp_path):
    a, b = _cell(tmp_path / "A" / "synth", 14), _cell(tmp_path / "B" / "synth", 10)
    cells = load_cells([a, b])
    assert [c["name"] for c in cells] == ["A/synth", "B/synth"]
    out = write_report(cells, tmp_path / "report", ("A/synth", "B/synth"))
    rows = {r["benchmark"]: r for r in csv.DictReader((out / "compare.csv").read_text().splitlines())}
    assert float(rows["SynthChart"]["diff"]) == pytest.approx(20.0) and float(rows["SynthDoc"]["diff"]) == 0.0
    table = (out / "report.md").read_text().split("## A/synth - B/synth")[1]
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header, chart = ([c.strip() for c in line.split("|")] for line in (lines[0], lines[-2]))
    assert chart[1] == "SynthChart" and dict(zip(header, chart))["n"] == "20"  # a count of samples: no decimals


def test_one_answer_to_every_question_is_never_significant(tmp_path):
    a = _cell(tmp_path / "A", 20, n=40, constant=True)  # "4" to every question, right on every chart question
    b = _cell(tmp_path / "B", 0, n=40)
    rows = {r["benchmark"]: r for r in compare(*load_cells([a, b]))}
    chart = rows["SynthChart"]
    assert chart["diff"] == pytest.approx(50.0) and chart["ci_low"] > 0  # a clear difference in the numbers ...
    assert chart["significant"] is False and "do not depend on the image" in chart["note"]  # ... not in seeing
    out = write_report(load_cells([a, b]), tmp_path / "r", ("A", "B"))
    md = (out / "report.md").read_text()
    assert "do not depend on the image" in md and "- A: at most 40 samples per task (`--limit`)" in md
    assert (out / "synth.png").stat().st_size > 10_000


def test_duplicate_names_and_self_comparison_are_refused(tmp_path):
    a = _cell(tmp_path / "A" / "synth", 14, name="genlip")
    b = _cell(tmp_path / "B" / "synth", 10, name="genlip")
    with pytest.raises(ValueError, match=r"named \['genlip'\]"):
        load_cells([a, b])
    with pytest.raises(ValueError, match="two or more cells"):
        load_cells([tmp_path / "A" / "synth", tmp_path / "A" / "synth"])
    c = _cell(tmp_path / "C" / "synth", 10)
    with pytest.raises(ValueError, match="two different cells"):
        write_report(load_cells([a, c]), tmp_path / "r", ("genlip", "genlip"))


def test_the_command_says_so_in_one_line(tmp_path):
    a = _cell(tmp_path / "A" / "synth", 14, name="same")
    b = _cell(tmp_path / "B" / "synth", 10, name="same")
    code, _, err = run_cli("genlip-eval", "report", str(a), str(b), "--out", str(tmp_path / "r"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "same" in err, err


@pytest.mark.parametrize("args,words", [(["--model", "{tmp}/none"], "--model {tmp}/none: no such directory"),
                                        (["--model", "{tmp}"], "is not an MLLM directory"),
                                        (["--model", "{tmp}/m", "--limit", "0"], "--limit must be at least 1"),
                                        (["--model", "{tmp}/m", "--max-new-tokens", "-1"],
                                         "--max-new-tokens must be at least 1, got -1"),
                                        (["--model", "{tmp}/m", "--tasks-dir", "{tmp}/nope"],
                                         "--tasks-dir {tmp}/nope: no such directory")])
def test_run_refuses_a_wrong_model_or_limit_before_starting_lmms_eval(tmp_path, args, words):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "genlip_mllm_image.json").write_text("{}")
    code, _, err = run_cli("genlip-eval", "run", *[a.format(tmp=tmp_path) for a in args], cwd=tmp_path,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"}, subprocess="--limit" in args)
    words = words.format(tmp=tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err
    assert not (tmp_path / "results").exists()


def test_a_sweep_directory_with_two_suites_per_cell_reports_and_compares(tmp_path):
    """A sweep evaluates each cell on each of its suites: ``genlip-eval report OUT`` takes the sweep's directory,
    one cell name may appear once per suite, and --compare compares the two cells on every suite they share."""
    sw = tmp_path / "sweep"
    for name, chart in (("a", 14), ("b", 10)):
        _cell(sw / "cells" / name / "eval" / "synth", chart, name=name)
        d = sw / "cells" / name / "eval" / "paper14"
        d.mkdir(parents=True)
        bench = {b.name: 40.0 + chart for b in SUITES["paper14"]}
        (d / "scores.json").write_text(json.dumps({"suite": "paper14", "benchmarks": bench, "name": name,
                                                   "averages": averages(SUITES["paper14"], bench),
                                                   "samples_dir": str(d)}))
    cells = load_cells([sw])
    assert sorted((c["name"], c["suite"]) for c in cells) == [("a", "paper14"), ("a", "synth"), ("b", "paper14"),
                                                              ("b", "synth")]
    code, _, err = run_cli("genlip-eval", "report", str(sw), "--out", str(tmp_path / "r"), "--compare", "a", "b")
    assert code == 0, err[-3000:]
    rows = list(csv.DictReader((tmp_path / "r" / "compare.csv").read_text().splitlines()))
    assert {r["suite"] for r in rows} == {"synth", "paper14"}
    diff = {(r["suite"], r["benchmark"]): float(r["diff"]) for r in rows}
    assert diff[("synth", "SynthChart")] == pytest.approx(20.0) and diff[("paper14", "ChartQA")] == pytest.approx(4.0)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## synth" in md and "## paper14" in md


def test_scores_are_reused_for_the_same_saved_model_only_and_another_models_out_is_refused(tmp_path):
    """``already evaluated`` holds for the model saved when the scores were made: trained again in the same directory,
    it is another model (its old scores would pass for its new ones). An ``--out`` that holds another model's scores
    is refused in one line: the two models' results would mix there."""
    from eval.run import OtherResults, model_id, run_suite

    m, other, out = tmp_path / "m", tmp_path / "other", tmp_path / "out"
    for d in (m, other):
        d.mkdir()
        (d / "genlip_mllm_image.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"weights")
    settings = {"model_path": str(m.resolve()), "model_id": model_id(m), "suite": "synth", "limit": 4,
                "max_new_tokens": None, "tasks_dir": None}
    out.mkdir()
    (out / "scores.json").write_text(json.dumps({**settings, "benchmarks": {"SynthDoc": 1.0}}))
    assert run_suite(m, "synth", out, 4)["reused"]
    (m / "model.safetensors").write_bytes(b"trained again")
    assert model_id(m) != settings["model_id"]
    with pytest.raises(OtherResults, match=f"{out} holds the scores of another model"):
        run_suite(other, "synth", out, 4)
    code, _, err = run_cli("genlip-eval", "run", "--model", str(other), "--out", str(out), "--limit", "4")
    assert code == 2 and err.strip().splitlines() == [
        f"genlip-eval: {out} holds the scores of another model ({m.resolve()}); give another --out"], err
