"""The whole chain at toy size through ``genlip-eval pipeline``: GenLIP stage 1 + 2, a sigmoid contrastive encoder
at the same sample budget, a random encoder, three frozen-encoder MLLMs, evaluation, and a report with intervals and
a verdict; a second invocation reuses everything."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("lmms_eval")

RECIPES = Path(__file__).parents[1] / "recipes"


def test_tiny_pipeline_end_to_end_and_resume(tmp_path):
    small = ["data.synth.samples=48", "train.max_steps=2", "train.global_batch=8", "train.micro_batch=8"]
    cfg = {"out": str(tmp_path / "pipe"),
           "stage1": {"recipe": str(RECIPES / "tiny_stage1.yaml"), "overrides": ["train.steps=4"]},
           "stage2": {"recipe": str(RECIPES / "tiny_stage2.yaml"), "overrides": ["train.steps=2"]},
           "contrastive": {"overrides": ["model.overrides.text_tower={layers: 1, max_len: 32}"]},
           "mllm": {"image_size": 32, "overrides": {"pretrain": small, "finetune": small}},
           "eval": {"limit": 4, "max_new_tokens": 6, "resamples": 100, "probe_per_class": [6, 4]}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "GENLIP_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "eval.cli", "pipeline", "--config", str(tmp_path / "cfg.yaml")]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    root = tmp_path / "pipe"
    budget = json.loads((root / "budget.json").read_text())
    # the baseline saw at least as many image-text samples as GenLIP's two stages together, less than a batch more
    assert 0 <= budget["contrastive_samples"] - budget["genlip_samples"] < 8
    summary = json.loads((root / "report" / "summary.json").read_text())
    assert set(summary["cells"]) == {"genlip", "contrastive", "random"}
    from eval.suites import SUITES

    suite = {b.name: b for b in SUITES["synth"]}
    # A mean of per-sample scores lies inside its percentile bootstrap interval, but a corpus-level CIDEr need not:
    # each resample recomputes CIDEr, IDF included, on images drawn with replacement, and the duplicates raise the
    # document frequencies, so the resampled scores are not centred on the point value. For it (and for every
    # benchmark) the interval must be finite, ordered and within the metric's range: CIDEr-D is at most 10 per
    # image, the fractions at most 1, times the paper's scale.
    corpus_level = {n for n, b in suite.items() if b.metric.endswith("CIDEr,none")}
    assert corpus_level == {"SynthCap"}
    top = {n: b.scale * (10.0 if n in corpus_level else 1.0) for n, b in suite.items()}
    for cell in summary["cells"].values():
        assert set(cell["benchmarks"]) == set(suite)
        for name, value in cell["benchmarks"].items():
            lo, hi = cell["intervals"][name]  # every benchmark has an interval, CIDEr's by resampling images
            assert math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi <= top[name], (name, lo, hi)
            assert 0 <= value <= top[name], (name, value)
            if name not in corpus_level:
                assert lo - 1e-6 <= value <= hi + 1e-6, (name, lo, value, hi)
    # every difference has a paired interval, CIDEr's by recomputing it on resampled images (so, as above, only the
    # per-sample means must contain their observed difference)
    for rows in summary["compare"].values():
        assert sorted(r["benchmark"] for r in rows) == sorted(suite)
        for r in rows:
            name, lo, hi = r["benchmark"], r["ci_low"], r["ci_high"]
            assert math.isfinite(lo) and math.isfinite(hi) and -top[name] <= lo <= hi <= top[name], r
            assert abs(r["diff"]) <= top[name], r
            if name not in corpus_level:
                assert lo - 1e-9 <= r["diff"] <= hi + 1e-9, r
    md = (root / "report" / "report.md").read_text()
    assert "## Verdict" in md and "Generative > contrastive" in md and "Largest GenLIP - contrastive gap" in md
    assert (root / "report" / "scores.png").stat().st_size > 5000
    # probes: every encoder on every task, chance-level or better is not asserted (toy training), but the numbers
    # are per-image accuracies over the balanced held-out set
    probes = summary["probes"]["results"]
    assert len(probes) == 3 * 5
    for r in probes.values():
        n = len(r["attentive"]["correct"])
        assert n % 4 == 0 and r["attentive"]["top1"] == pytest.approx(100 * sum(r["attentive"]["correct"]) / n)
    assert "Attentive probes, mean top-1 on reading tasks" in md
    # the random encoder is really untrained, and the trained ones really moved away from it
    from safetensors.torch import load_file

    rnd = load_file(str(root / "encoders" / "random" / "model.safetensors"))
    gen = load_file(str(sorted((root / "encoders" / "genlip" / "checkpoints").glob("step_*"))[-1] /
                        "model.safetensors"))
    k = "vit.blocks.0.attn.k_proj.weight"
    assert rnd[k].shape == gen[k].shape and not (rnd[k] == gen[k]).all()
    before = _finished_outputs(root)
    assert "encoders/random/model.safetensors" in before and "probes.json" in before, sorted(before)
    assert sum(k.endswith("finetune/final/genlip_mllm_image.json") for k in before) == 3, sorted(before)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("all reused") == 3, again.stdout[-2000:]
    assert not any(s in again.stdout for s in ("GenLIP stage 1 ...", "GenLIP stage 2 ...", "contrastive baseline"))
    # nothing was trained, evaluated or probed again: every checkpoint, sample log and probe result is untouched
    assert _finished_outputs(root) == before


def _finished_outputs(root: Path) -> dict[str, int]:
    """``{path relative to root: st_mtime_ns}`` of what training, evaluation and the probes wrote (not the report,
    the resolved configs, budget and timings, nor the ``scores.json`` files that every run re-stamps)."""
    files = [*root.glob("encoders/**/*"), *root.glob("logs/**/*"), *root.glob("probe_data/**/*"),
             root / "probes.json", *root.glob("sweep/cells/*/pretrain/**/*"), *root.glob("sweep/cells/*/finetune/**/*"),
             *root.glob("sweep/cells/*/eval/*/raw/**/*")]
    return {str(f.relative_to(root)): f.stat().st_mtime_ns for f in files if f.is_file()}


def _cell(tmp_path, name, scores, answers):
    """A sweep cell as the verdict reads it: per-benchmark scores and lmms-eval sample logs with these answers."""
    from eval.suites import SUITES

    d = tmp_path / name
    d.mkdir()
    for b in SUITES["synth"]:
        lines = [json.dumps({"filtered_resps": [a]}) for a in answers[b.name]]
        (d / f"x_samples_{b.task}.jsonl").write_text("\n".join(lines))
    return {"suite": "synth", "samples_dir": str(d), "benchmarks": scores,
            "averages": {"ALL AVG": sum(scores.values()) / len(scores)}}


@pytest.mark.parametrize("case,expect", [
    ("all_equal", "no** (GenLIP is ahead on no benchmark)"),
    ("gap_on_blind_answers", "not shown**"),
    ("gap_on_reading", "**yes**"),
    ("gap_on_caption", "**no**"),
])
def test_reading_gap_verdict_needs_image_dependent_answers(tmp_path, case, expect):
    from eval.pipeline_report import verdict

    varied, const = ["a", "b", "c"], ["a", "a", "a"]
    zero = {"SynthDoc": 0.0, "SynthChart": 0.0, "SynthCap": 0.0}
    g_scores = {"all_equal": zero, "gap_on_blind_answers": {**zero, "SynthDoc": 5.0},
                "gap_on_reading": {**zero, "SynthDoc": 5.0}, "gap_on_caption": {**zero, "SynthCap": 5.0}}[case]
    answers = {n: (const if case == "gap_on_blind_answers" else varied) for n in zero}
    cells = {"genlip": _cell(tmp_path, "g", g_scores, answers),
             "contrastive": _cell(tmp_path, "c", zero, answers),
             "random": _cell(tmp_path, "r", zero, answers)}
    lines = verdict(cells, {"contrastive": []})
    gap_line = next(line for line in lines if "Largest gap on a reading task" in line)
    assert expect in gap_line, gap_line


def test_a_difference_on_answers_that_ignore_the_image_is_not_counted_as_significant(tmp_path):
    from eval.pipeline_report import verdict

    zero = {"SynthDoc": 0.0, "SynthChart": 0.0, "SynthCap": 0.0}
    varied = {n: ["a", "b", "c"] for n in zero}
    blind_cap = {**varied, "SynthCap": ["a", "a", "a"]}
    cells = {"genlip": _cell(tmp_path, "g", zero, blind_cap), "contrastive": _cell(tmp_path, "c", zero, varied),
             "random": _cell(tmp_path, "r", zero, varied)}
    rows = [{"benchmark": "SynthCap", "diff": -3.7, "ci_low": -7.3, "ci_high": -0.6, "significant": True},
            {"benchmark": "SynthDoc", "diff": 2.0, "ci_low": 0.5, "ci_high": 3.5, "significant": True}]
    line = next(x for x in verdict(cells, {"contrastive": rows}) if "is significant on" in x)
    assert "significant on 1 of 2: SynthDoc" in line and "not counted: SynthCap" in line, line
