"""The README's journey as a user runs it: installed console scripts, from a working directory outside the
repository, at tiny size: ``genlip-pretrain`` (stage 1, stage 2) -> ``genlip-mllm pretrain`` -> ``genlip-mllm
finetune`` -> ``genlip-eval run`` (the real lmms-eval CLI on the generated benchmarks) -> ``genlip-eval report``;
then every command again, which must report the finished work and change nothing. Plus the one-line errors a user
meets first: an unknown bundled config, DeepSpeed without a launcher."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from tests.cli import run_cli  # noqa: E402

RECIPES = Path(__file__).parent / "recipes"
BIN = Path(sys.executable).parent


def _cli(name: str, *args: str, cwd: Path, env: dict, ok: bool = True) -> subprocess.CompletedProcess:
    exe = BIN / name
    assert exe.exists(), f"{exe}: the console script is not installed"
    p = subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if ok:
        assert p.returncode == 0, f"{name} {args}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def _tree(d: Path) -> dict[str, int]:
    """Every file under ``d`` with its modification time (ns): what a second run must leave untouched."""
    return {str(f.relative_to(d)): f.stat().st_mtime_ns for f in sorted(d.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    work = tmp_path_factory.mktemp("user")  # not the repository: recipes come by path or bundled name
    env = {**os.environ, "GENLIP_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(work / "hf"), "OMP_NUM_THREADS": "1"}
    small = ["data.synth.samples=48", "train.max_steps=2", "train.global_batch=8", "train.micro_batch=8"]
    steps = [
        ("genlip-pretrain", "--recipe", str(RECIPES / "tiny_stage1.yaml"), "train.steps=4",
         "train.output_dir=runs/s1", "log.tensorboard=true"),
        ("genlip-pretrain", "--recipe", str(RECIPES / "tiny_stage2.yaml"), "train.steps=2", "model.init_from=runs/s1",
         "train.output_dir=runs/s2"),
        ("genlip-mllm", "pretrain", "--recipe", str(RECIPES / "mllm_pretrain.yaml"), "model.vision=runs/s2",
         "train.output_dir=runs/align", "train.report_to=[tensorboard]", *small),
        ("genlip-mllm", "finetune", "--recipe", str(RECIPES / "mllm_finetune.yaml"),
         "model.init_from=runs/align/final", "train.output_dir=runs/sft", *small),
        ("genlip-eval", "run", "--model", "runs/sft/final", "--suite", "synth", "--limit", "4",
         "--max-new-tokens", "6", "--out", "results/tiny"),
        ("genlip-eval", "report", "results/tiny", "--out", "report"),
    ]
    first = [_cli(s[0], *s[1:], cwd=work, env=env) for s in steps]
    before = _tree(work / "runs") | {f"results/{k}": v for k, v in _tree(work / "results").items()}
    again = [_cli(s[0], *s[1:], cwd=work, env=env) for s in steps]
    after = _tree(work / "runs") | {f"results/{k}": v for k, v in _tree(work / "results").items()}
    return work, env, first, again, before, after


def test_the_journey_produces_every_output(journey):
    work, _, first, *_ = journey
    assert (work / "runs/s1/checkpoints/step_00000004/model.safetensors").exists()
    assert (work / "runs/s2/checkpoints/step_00000002/model.safetensors").exists()
    assert "final weights: runs/s2/checkpoints/step_00000002" in first[1].stdout
    for stage in ("align", "sft"):
        assert (work / f"runs/{stage}/final/recipe.yaml").exists()
    # loss / learning-rate curves as PNGs, and TensorBoard events where asked for, with the loss in them
    from PIL import Image

    for png in ("runs/s1/curves.png", "runs/s2/curves.png", "runs/align/final/curves.png", "runs/sft/final/curves.png"):
        assert Image.open(work / png).size[0] > 500, png
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for events, tag in ((work / "runs/s1/tensorboard", "loss"), (next((work / "runs/align/runs").iterdir()),
                                                                 "train/loss")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        assert tag in acc.Tags()["scalars"] and len(acc.Scalars(tag)) >= 2, (events, acc.Tags())
    # the real lmms-eval CLI wrote its results file, with lmms-eval's own metric names
    results = sorted(f for f in (work / "results/tiny/raw").rglob("*_results.json") if f.name[0].isdigit())
    assert len(results) == 1
    got = json.loads(results[0].read_text())["results"]
    assert {"genlip_synth_docvqa", "genlip_synth_chartqa", "genlip_synth_caption"} <= set(got)
    assert "anls,none" in got["genlip_synth_docvqa"] and "coco_CIDEr,none" in got["genlip_synth_caption"]
    # progress per benchmark while lmms-eval runs (its own output goes to the log)
    for task in ("genlip_synth_docvqa", "genlip_synth_chartqa", "genlip_synth_caption"):
        assert f"[genlip-eval] {task}: 4/4 answers (100%)" in first[4].stderr, first[4].stderr[-2000:]
    scores = json.loads((work / "results/tiny/scores.json").read_text())
    assert scores["limit"] == 4 and set(scores["benchmarks"]) == {"SynthDoc", "SynthChart", "SynthCap"}
    assert (work / "report/report.md").read_text().count("SynthChart") >= 1


def test_every_command_run_again_reports_finished_work_and_changes_nothing(journey):
    work, _, first, again, before, after = journey
    assert "already finished" in again[0].stdout and "runs/s1/checkpoints/step_00000004" in again[0].stdout
    assert "already finished" in again[1].stdout
    assert "already finished" in again[2].stdout and "runs/align/final" in again[2].stdout
    assert "already finished" in again[3].stdout
    assert "already evaluated" in again[4].stdout
    # the same scores printed, and no file of any run or result written again
    assert first[4].stdout.splitlines()[:3] == again[4].stdout.splitlines()[1:4]
    assert after == before


def test_a_finished_run_given_more_steps_trains_on(journey):
    work, env, *_ = journey
    p = _cli("genlip-pretrain", "--recipe", str(RECIPES / "tiny_stage2.yaml"), "train.steps=3",
             "model.init_from=runs/s1", "train.output_dir=runs/s2", cwd=work, env=env)
    assert "resumed from runs/s2/checkpoints/step_00000002 at step 2" in p.stdout
    assert (work / "runs/s2/checkpoints/step_00000003/model.safetensors").exists()


def test_deepspeed_configs_by_name_and_one_line_errors(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)
    p = _cli("genlip-mllm", "finetune", "train.deepspeed=zero3", "--print-recipe", cwd=tmp_path, env=env)
    ds = Path(next(line.split(": ", 1)[1] for line in p.stdout.splitlines() if "deepspeed:" in line))
    assert ds.name == "zero3.json" and json.loads(ds.read_text())["zero_optimization"]["stage"] == 3
    # the rest in this process, through the scripts' entry points (tests.cli), but the launcher check
    # a path relative to the working directory
    (tmp_path / "my_ds.json").write_text(ds.read_text())
    code, out, _ = run_cli("genlip-mllm", "finetune", "train.deepspeed=my_ds.json", "--print-recipe", cwd=tmp_path,
                           env=env)
    assert code == 0 and f"deepspeed: {tmp_path / 'my_ds.json'}" in out
    # a wrong name: one line that lists the bundled configs, before any model is loaded
    code, _, err = run_cli("genlip-mllm", "finetune", "train.deepspeed=zero4", cwd=tmp_path, env=env)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "zero2, zero3" in err and "Traceback" not in err
    # DeepSpeed without a distributed launcher: the torchrun command to use
    p = _cli("genlip-mllm", "finetune", "train.deepspeed=zero2", cwd=tmp_path, env=env, ok=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "torchrun --nproc_per_node <GPUs> -m mllm.cli finetune" in p.stderr
    # an unknown recipe name
    code, _, err = run_cli("genlip-pretrain", "--recipe", "stage1_So61", cwd=tmp_path, env=env)
    assert code == 2 and "stage1_So16" in err and "Traceback" not in err
