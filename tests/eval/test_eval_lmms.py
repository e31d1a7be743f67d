"""The lmms-eval model answers through the real ``lmms-eval`` CLI on the generated tasks, the scores equal a direct
computation from its own answers, and the in-process path keeps the live model."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lmms_eval")

from eval.synth_bench import SYNTH_TASKS, write_synth_benchmarks  # noqa: E402
from mllm.build import build_mllm, load_mllm, save_mllm  # noqa: E402
from tests.mllm_fixtures import make_llm, make_towers  # noqa: E402


def anls(pred: str, answers: list[str], tau: float = 0.5) -> float:
    """ANLS written out from its definition (1 - normalised Levenshtein distance, 0 below the threshold)."""
    def lev(a, b):
        prev = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            cur = [i]
            for j, cb in enumerate(b, 1):
                cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
            prev = cur
        return prev[-1]

    best = 0.0
    for g in answers:
        p, t = pred.strip().lower(), g.strip().lower()
        nl = lev(p, t) / max(len(p), len(t), 1)
        best = max(best, 1 - nl if nl < tau else 0.0)
    return best


def relaxed(pred: str, target: str) -> float:
    try:
        p, t = float(pred.strip().rstrip("%")), float(target)
        return float(abs(p - t) / abs(t) <= 0.05 if t else p == t)
    except ValueError:
        return float(pred.strip().lower() == target.strip().lower())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ev")
    towers, llm = make_towers(root), make_llm(root)
    torch.manual_seed(0)
    model, tok, spec = build_mllm(str(towers["genlip"]), str(llm), "resize", image_size=32)
    bench = write_synth_benchmarks(root / "bench", samples=4)
    _teach(model, tok, spec, bench)  # a few steps on the benchmarks' own questions, so answers are words
    save_mllm(root / "model", model, tok, spec)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(root / "hf"),
           "OMP_NUM_THREADS": "1"}
    return root, bench, env


def _teach(model, tok, spec, bench, steps=60):
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    from mllm.data import Collator
    from mllm.processing import ConversationEncoder, make_image_processor

    enc = ConversationEncoder(tok, spec, model.config.image_token_id)
    examples = []
    for name, post in (("synth_docvqa", "\nAnswer the question using a single word or phrase."),
                       ("synth_chartqa", "\nAnswer the question with a single word.")):
        for row in pq.read_table(bench / "data" / f"{name}.parquet").to_pylist():
            img = Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
            target = row["answers"][0] if "answers" in row else row["answer"]
            ids, labels = enc.encode([{"from": "human", "value": "<image>\n" + row["question"] + post},
                                      {"from": "gpt", "value": target}], [img])
            examples.append({"input_ids": ids, "labels": labels, "images": [img]})
    batch = Collator(spec, make_image_processor(spec), tok.pad_token_id)(examples)
    batch.pop("skip_reasons"), batch.pop("cut_samples")
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if "vision_tower" not in n], lr=3e-3)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def test_real_cli_scores_equal_a_direct_computation(setup):
    root, bench, env = setup
    out = root / "out"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "genlip_mllm", "--model_args",
           f"pretrained={root / 'model'},max_new_tokens=8", "--tasks", ",".join(SYNTH_TASKS), "--include_path",
           str(bench / "tasks"), "--batch_size", "1", "--output_path", str(out), "--log_samples"]
    work = root / "cwd"  # lmms-eval writes some files into the working directory
    work.mkdir(exist_ok=True)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=work)
    results = sorted(p for p in out.rglob("*_results.json") if p.name[0].isdigit())  # not submissions/
    assert p.returncode == 0 and results, p.stderr[-4000:]  # lmms-eval exits 0 on failure: check the output
    res = json.loads(results[-1].read_text())["results"]
    assert set(SYNTH_TASKS) <= set(res)
    model, tok, spec, ip = load_mllm(root / "model")
    import pyarrow.parquet as pq
    from PIL import Image

    from mllm.chat import answer

    for task, metric, scorer, data in [("genlip_synth_docvqa", "anls,none", anls, "synth_docvqa"),
                                       ("genlip_synth_chartqa", "relaxed_overall,none", relaxed, "synth_chartqa")]:
        logged = [json.loads(x) for x in next(out.rglob(f"*samples_{task}.jsonl")).read_text().splitlines()]
        rows = pq.read_table(bench / "data" / f"{data}.parquet").to_pylist()
        assert len(logged) == len(rows) == 4
        direct = []
        for rec in sorted(logged, key=lambda r: r["doc_id"]):
            row = rows[rec["doc_id"]]
            import io

            img = Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
            pred = answer(model, tok, spec, ip, img, rec["input"], max_new_tokens=8)
            logged_pred = rec["filtered_resps"]
            logged_pred = logged_pred[0] if isinstance(logged_pred, list) else logged_pred
            assert pred == logged_pred and pred, "the adapter answers exactly as the model does"
            direct.append(scorer(pred, row["answers"] if "answers" in row else row["answer"]))
        assert res[task][metric] == pytest.approx(sum(direct) / len(direct), abs=1e-9)


def test_in_process_evaluation_keeps_the_live_model(setup):
    root, bench, env = setup
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from eval.lmms_model import GenlipMllm

    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME"):
        os.environ[k] = env[k]
    model, tok, spec, ip = load_mllm(root / "model")
    lm = GenlipMllm.from_live(model, tok, spec, ip, max_new_tokens=8)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = simple_evaluate(model=lm, tasks=["genlip_synth_chartqa"], batch_size=1,
                          task_manager=TaskManager(include_path=str(bench / "tasks")))
    assert "relaxed_overall,none" in out["results"]["genlip_synth_chartqa"]
    # lmms-eval calls clean() after evaluating: the live wrapper keeps all four parts and the model's weights as they
    # were (same tensors, same device, same values)
    assert lm.parts is not None and all(x is y for x, y in zip(lm.parts, (model, tok, spec, ip), strict=True))
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert after[k].device == v.device and torch.equal(after[k], v), f"{k} changed during evaluation"


def test_genlip_eval_run_reports_the_suite(setup, tmp_path):
    root, bench, env = setup
    out = tmp_path / "res"
    p = subprocess.run([sys.executable, "-m", "eval.cli", "run", "--model", str(root / "model"), "--suite", "synth",
                        "--out", str(out), "--max-new-tokens", "8"], env=env, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((out / "scores.json").read_text())
    raw = res["raw"]
    assert res["benchmarks"]["SynthDoc"] == pytest.approx(100 * raw["genlip_synth_docvqa"]["anls,none"])
    assert res["benchmarks"]["SynthCap"] == pytest.approx(100 * raw["genlip_synth_caption"]["coco_CIDEr,none"])
    vals = list(res["benchmarks"].values())
    assert res["averages"]["ALL AVG"] == pytest.approx(sum(vals) / 3)
    assert "ALL AVG" in p.stdout
    # empty answers are counted from the logged samples and said (a model that ends at once scores 0 silently)
    for task, (empty, n) in res["empty_answers"].items():
        rows = [json.loads(x) for f in Path(res["samples_dir"]).glob(f"*samples_{res['tasks'][task]}.jsonl")
                for x in f.read_text().splitlines()]
        assert n == len(rows) > 0 and empty == sum(json.dumps(r["filtered_resps"]).strip('[]" ') == "" for r in rows)
        assert (f"note: {empty} of {n} answers to {task} are empty" in p.stdout) == (empty > 0), p.stdout


def test_genlip_eval_run_detects_a_failed_evaluation(setup, tmp_path):
    root, bench, env = setup
    broken = tmp_path / "broken-model"  # passes the CLI's own check, then lmms-eval cannot load it
    broken.mkdir()
    (broken / "genlip_mllm_image.json").write_text((root / "model" / "genlip_mllm_image.json").read_text())
    p = subprocess.run([sys.executable, "-m", "eval.cli", "run", "--model", str(broken),
                        "--suite", "synth", "--out", str(tmp_path / "res")], env=env, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 1 and "lmms-eval failed" in p.stderr


def test_report_tables_charts_and_bootstrap_comparison(setup, tmp_path):
    import pandas as pd

    from eval.report import load_cells, write_report
    from eval.run import run_suite

    root, bench, env = setup
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME"):
        os.environ[k] = env[k]
    torch.manual_seed(1)
    model, tok, spec = build_mllm(str(root / "genlip"), str(root / "llm"), "resize", image_size=32)
    save_mllm(root / "untrained", model, tok, spec)  # a second "encoder" cell: nothing learned
    run_suite(root / "model", "synth", tmp_path / "trained", max_new_tokens=8)
    run_suite(root / "untrained", "synth", tmp_path / "untrained", max_new_tokens=8)
    cells = load_cells([tmp_path / "trained", tmp_path / "untrained"])
    out = write_report(cells, tmp_path / "report", ("trained", "untrained"))
    df = pd.read_csv(out / "report.csv")
    assert list(df["cell"]) == ["trained", "untrained"] and "ALL AVG" in df.columns
    assert (out / "synth.png").stat().st_size > 5000
    cmp = pd.read_csv(out / "compare.csv").set_index("benchmark")
    for name in ("SynthDoc", "SynthChart"):
        a, b = cells[0]["benchmarks"][name], cells[1]["benchmarks"][name]
        assert cmp.loc[name, "diff"] == pytest.approx(a - b)
        assert cmp.loc[name, "ci_low"] <= cmp.loc[name, "diff"] <= cmp.loc[name, "ci_high"]
    assert "corpus-level" in cmp.loc["SynthCap", "note"]
    assert "trained - untrained" in (out / "report.md").read_text()


def test_synth_task_files_name_their_data_by_absolute_path(tmp_path, monkeypatch):
    # lmms-eval runs in another working directory, so a relative output dir must not leak into the task files
    import yaml

    class Loader(yaml.SafeLoader):  # lmms-eval's `!function` tags are not ours to resolve here
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    monkeypatch.chdir(tmp_path)
    bench = write_synth_benchmarks("runs/bench", samples=2)
    files = sorted((bench / "tasks").rglob("*.yaml"))
    assert len(files) == 3
    for f in files:
        cfg = yaml.load(f.read_text(), Loader=Loader)  # noqa: S506 (a SafeLoader subclass)
        for path in cfg["dataset_kwargs"]["data_files"].values():
            assert Path(path).is_absolute() and Path(path).exists(), (f.name, path)


def test_generated_task_files_name_no_path_of_the_environment(setup):
    """The task files include copies of lmms-eval's definitions by relative name and import its functions by module
    name: nothing in them points into the virtual environment, so moving or rebuilding it does not break them."""
    import lmms_eval

    _, bench, _ = setup
    env_root = str(Path(lmms_eval.__file__).parents[1])
    files = [f for f in (bench / "tasks").rglob("*") if f.is_file()]
    assert len([f for f in files if f.suffix == ".yaml"]) == 3
    for f in files:
        text = f.read_text()
        assert env_root not in text and "site-packages" not in text, f
        for inc in re.findall(r"^include:\s*(\S+)", text, flags=re.M):
            assert "/" not in inc and (f.parent / inc).is_file(), (f, inc)
