"""A tiny sweep end to end through the CLI: 2 encoders x 1 LLM x 1 protocol x 1 suite, plus one broken encoder that
fails alone; a re-run reuses every finished cell; the report compares the finished ones. A grid with a mistake that
the training command would refuse, or one that describes a finished cell differently, stops before anything runs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytest.importorskip("lmms_eval")

from eval.sweep import check_grid, load_grid  # noqa: E402
from genlip.run.config import RecipeError  # noqa: E402
from tests.mllm_fixtures import make_towers  # noqa: E402


def test_tiny_sweep_runs_resumes_and_reports(tmp_path):
    towers = make_towers(tmp_path / "towers")
    small = ["data.synth.samples=48", "train.max_steps=3", "train.global_batch=8", "train.micro_batch=8"]
    grid = {
        "out": str(tmp_path / "sweep"),
        "encoders": {"genlip": {"path": str(towers["genlip"]), "image_size": 32},
                     "siglip": {"path": str(towers["siglip"])},
                     "missing": {"path": str(tmp_path / "no-such-tower")}},
        "llms": {"tiny": "tiny"},
        "protocols": {"frozen": {"mode": "resize", "lr_vision": 0.0}},
        "suites": ["synth"],
        "overrides": {"pretrain": small, "finetune": small},
        "eval": {"limit": 4, "max_new_tokens": 8},
    }
    gf = tmp_path / "grid.yaml"
    gf.write_text(yaml.safe_dump(grid))
    env = {**os.environ, "GENLIP_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "eval.cli", "sweep", "--grid", str(gf)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500, cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        f"genlip-eval: cell missing__tiny__frozen, pretrain: model.vision: {tmp_path / 'no-such-tower'}: "
        "no such directory"], \
        p.stderr[-3000:]
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "home").exists(), "checked before anything runs"
    # a tower whose config loads but whose weights do not: found only when its cell trains, and that cell alone fails
    shutil.copytree(towers["siglip"], tmp_path / "broken")
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not safetensors")
    grid["encoders"] = {**grid["encoders"], "broken": {"path": str(tmp_path / "broken")}}
    del grid["encoders"]["missing"]
    gf.write_text(yaml.safe_dump(grid))
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500, cwd=tmp_path)
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]  # one cell failed, and says so
    status = json.loads((tmp_path / "sweep" / "status.json").read_text())
    assert status["genlip__tiny__frozen"]["status"] == "done" and status["siglip__tiny__frozen"]["status"] == "done"
    assert status["broken__tiny__frozen"]["status"] == "failed" and "pretrain failed" in \
        status["broken__tiny__frozen"]["error"]
    assert "2 cells done, 1 failed" in p.stdout
    report = pd.read_csv(tmp_path / "sweep" / "report" / "report.csv")
    assert sorted(report["cell"]) == ["genlip__tiny__frozen", "siglip__tiny__frozen"]
    assert report["ALL AVG"].notna().all()

    done = ["genlip__tiny__frozen", "siglip__tiny__frozen"]
    before = _finished_outputs(tmp_path / "sweep", done)
    for cell in done:  # the snapshot holds both trained MLLMs and their logged evaluation samples
        assert f"{cell}/finetune/final/genlip_mllm_image.json" in before, sorted(before)
        assert any(k.startswith(f"{cell}/eval/synth/raw/") and "_samples_" in k for k in before), sorted(before)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500, cwd=tmp_path)
    assert again.stdout.count("all reused") == 2, again.stdout
    status2 = json.loads((tmp_path / "sweep" / "status.json").read_text())
    assert status2["genlip__tiny__frozen"]["ran"] == [] and status2["siglip__tiny__frozen"]["ran"] == []
    # nothing finished was trained or evaluated again: every checkpoint and sample log is the same file, untouched
    assert _finished_outputs(tmp_path / "sweep", done) == before
    assert not list((tmp_path / "sweep" / "cells").glob("*/eval/*/cwd")), "no empty lmms-eval working directories"

    # the same cells described differently: refused, naming what changed, before anything runs or is rewritten
    resolved = (tmp_path / "sweep" / "grid.resolved.yaml").read_text()
    for change, words in [
        ({"protocols": {"frozen": {"mode": "resize", "lr_vision": 2.0e-6}}}, "its finished finetune stage was "
         "trained with other settings (lr_vision: 0.0 -> 2e-06)"),
        ({"overrides": {"pretrain": [*small, "train.seed=1"], "finetune": small}}, "its finished pretrain stage "
         "was trained with other settings (overrides: [" + ", ".join(repr(o) for o in small) + "] -> ["),
        ({"encoders": {"genlip": {"path": str(towers["clip"]), "image_size": 32}}}, "(vision: "),
        ({"overrides": {"pretrain": small, "finetune": [*small, "train.max_stesp=2"]}},
         "finetune: unknown key 'train.max_stesp'; did you mean train.max_steps?"),
        ({"pretrain_recipe": "pretrain_tiny_cpuu"}, "pretrain: "),
        ({"overrides": {"pretrain": small, "finetune": [*small, "data.path=/no/such.json"]}},
         "finetune: data.path: /no/such.json: no such file"),
    ]:
        gf.write_text(yaml.safe_dump({**grid, **change}))
        if "protocols" in change:  # through the command once: one line, exit code 2
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
            lines = p.stderr.strip().splitlines()
            assert p.returncode == 2 and len(lines) == 1 and words in lines[0] and "Traceback" not in p.stderr, \
                (change, p.stderr[-3000:])
            assert lines[0].startswith("genlip-eval: cell "), lines[0]
            continue
        with pytest.raises(RecipeError) as e:  # the same check the command runs first, in this process
            check_grid(load_grid(gf), tmp_path / "sweep")
        assert words in str(e.value) and str(e.value).startswith("cell ") and "\n" not in str(e.value), str(e.value)
    # what a recipe file held is compared too (an edit inside it; a sweep directory from before cell.json)
    record = tmp_path / "sweep" / "cells" / "genlip__tiny__frozen" / "cell.json"
    kept = record.read_text()
    record.unlink()
    gf.write_text(yaml.safe_dump({**grid, "overrides": {"pretrain": [*small, "train.weight_decay=0.5"],
                                                        "finetune": small}}))
    with pytest.raises(RecipeError, match=r"finished pretrain stage .*\(train\.weight_decay: 0\.0 -> 0\.5\)"):
        check_grid(load_grid(gf), tmp_path / "sweep")
    record.write_text(kept)
    assert (tmp_path / "sweep" / "grid.resolved.yaml").read_text() == resolved
    assert _finished_outputs(tmp_path / "sweep", done) == before


def _finished_outputs(root: Path, cells: list[str]) -> dict[str, int]:
    """``{path relative to root/cells: st_mtime_ns}`` of what training and evaluation wrote for these cells (the
    ``scores.json`` next to ``raw/`` is left out: every run re-stamps the cell's name into it)."""
    out = {}
    for cell in cells:
        d = root / "cells" / cell
        for f in [*d.glob("pretrain/**/*"), *d.glob("finetune/**/*"), *d.glob("eval/*/raw/**/*")]:
            if f.is_file():
                out[str(f.relative_to(root / "cells"))] = f.stat().st_mtime_ns
    return out
