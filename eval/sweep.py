"""Sweeps: a grid of encoders x LLMs x protocols x suites. Each cell trains its MLLM (alignment, then instruction
tuning) or reuses a finished one, then evaluates it; finished work is skipped on re-run, and a failed cell is
reported without stopping the others. The report compares every finished cell.

Grid file (YAML)::

    out: runs/sweep
    encoders: {genlip: {path: runs/stage2_tiny_cpu, image_size: 64}, siglip: {path: /ckpt/siglip-so400m}}
    llms: {tiny: tiny}                     # name -> local LLM directory ("tiny": the generated tiny Qwen2)
    protocols: {frozen: {mode: resize, lr_vision: 0.0}, unfrozen: {mode: anyres, lr_vision: 2.0e-6}}
    suites: [synth]
    pretrain_recipe: pretrain_tiny_cpu
    finetune_recipe: finetune_tiny_cpu
    overrides: {pretrain: [train.max_steps=4], finetune: [train.max_steps=4]}
    eval: {limit: 8, max_new_tokens: 16}   # tasks_dir: DIR (from `genlip-eval local-tasks`) for local exports;
                                           # batch_size: N answers together (16 or more on a GPU)
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from eval.report import load_cells, write_report
from eval.run import run_suite
from eval.suites import SUITES
from genlip.run.config import bounded, load_config, to_dict


@dataclass
class EncoderEntry:
    path: str
    image_size: int | None = None  # default: the tower's own resolution


@dataclass
class ProtocolEntry:
    mode: Literal["resize", "anyres", "native"] = "resize"
    lr_vision: float = 0.0  # 0 = the encoder frozen


@dataclass
class StageOverrides:
    pretrain: list[str] = field(default_factory=list)
    finetune: list[str] = field(default_factory=list)


@dataclass
class EvalEntry:
    limit: int | None = None
    max_new_tokens: int | None = None
    tasks_dir: str | None = None
    batch_size: int = bounded(1, ge=1)  # questions answered together (answers equal batch size 1's)


@dataclass
class Grid:
    """The schema of a grid file: unknown keys (a typo such as ``lr_visoin``) and bad values are errors at load."""

    encoders: dict[str, EncoderEntry | str]  # a name -> {path, image_size} or just the path
    llms: dict[str, str]
    protocols: dict[str, ProtocolEntry]
    suites: list[str]
    out: str = "runs/sweep"
    pretrain_recipe: str = "pretrain_tiny_cpu"
    finetune_recipe: str = "finetune_tiny_cpu"
    overrides: StageOverrides = field(default_factory=StageOverrides)
    eval: EvalEntry = field(default_factory=EvalEntry)

    def __post_init__(self) -> None:
        for key in ("encoders", "llms", "protocols", "suites"):
            if not getattr(self, key):
                raise ValueError(f"the grid needs at least one entry in {key!r}")
        unknown = [s for s in self.suites if s not in SUITES]
        if unknown:
            raise ValueError(f"unknown suites {unknown}; choose from {sorted(SUITES)}")


def load_grid(path: str | Path) -> dict:
    """The grid, validated (:class:`Grid`), as a plain dict with every default filled in."""
    return to_dict(load_config(path, Grid))


def cells(grid: dict) -> list[dict]:
    out = []
    for (enc, e), (llm, path), (proto, p) in itertools.product(grid["encoders"].items(), grid["llms"].items(),
                                                              grid["protocols"].items()):
        e = e if isinstance(e, dict) else {"path": e}
        out.append({"name": f"{enc}__{llm}__{proto}", "encoder": enc, "vision": e["path"],
                    "image_size": e.get("image_size"), "llm": llm, "llm_path": path, "protocol": proto,
                    "mode": p.get("mode", "resize"), "lr_vision": float(p.get("lr_vision", 0.0))})
    return out


def _mllm(stage: str, recipe: str, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", "mllm.cli", stage, "--recipe", recipe, *overrides]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"genlip-mllm {stage} failed (exit {p.returncode}): {tail}")


def run_cell(cell: dict, grid: dict, root: Path) -> dict:
    d = root / "cells" / cell["name"]
    pre, fin = d / "pretrain" / "final", d / "finetune" / "final"
    steps = []
    if not (pre / "genlip_mllm_image.json").exists():
        ov = [f"model.vision={cell['vision']}", f"model.llm={cell['llm_path']}", f"model.mode={cell['mode']}",
              f"train.output_dir={d / 'pretrain'}"]
        # the encoder's own resolution unless the grid sets one (a recipe's value would not fit every tower)
        ov.append(f"model.image_size={cell['image_size'] if cell['image_size'] else 'null'}")
        _mllm("pretrain", grid["pretrain_recipe"], ov + list(grid["overrides"].get("pretrain", [])))
        steps.append("pretrain")
    if not (fin / "genlip_mllm_image.json").exists():
        ov = [f"model.init_from={pre}", f"lr.vision_tower={cell['lr_vision']}", f"train.output_dir={d / 'finetune'}"]
        _mllm("finetune", grid["finetune_recipe"], ov + list(grid["overrides"].get("finetune", [])))
        steps.append("finetune")
    scores = {}
    for suite in grid["suites"]:
        target = d / "eval" / suite
        if not (target / "scores.json").exists():
            run_suite(fin, suite, target, grid["eval"].get("limit"), grid["eval"].get("max_new_tokens"),
                      tasks_dir=grid["eval"].get("tasks_dir"), batch_size=grid["eval"].get("batch_size", 1))
            steps.append(f"eval:{suite}")
        res = json.loads((target / "scores.json").read_text())
        res["name"] = cell["name"]
        (target / "scores.json").write_text(json.dumps(res, indent=1))
        scores[suite] = str(target)
    return {"status": "done", "ran": steps, "scores": scores}


def sweep(grid_path: str | Path) -> dict:
    """Run (or resume) the grid; writes ``out/status.json`` and ``out/report``; returns the status per cell."""
    grid = load_grid(grid_path)
    root = Path(grid["out"])
    root.mkdir(parents=True, exist_ok=True)
    (root / "grid.resolved.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    status = {}
    for cell in cells(grid):
        print(f"[sweep] {cell['name']} ...", flush=True)
        try:
            status[cell["name"]] = run_cell(cell, grid, root)
            ran = status[cell["name"]]["ran"]
            print(f"[sweep] {cell['name']}: done ({', '.join(ran) if ran else 'all reused'})", flush=True)
        except Exception as e:  # a failed cell is reported; the others go on
            status[cell["name"]] = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                    "trace": traceback.format_exc(limit=3)}
            print(f"[sweep] {cell['name']}: FAILED: {e}", flush=True)
        (root / "status.json").write_text(json.dumps(status, indent=1))
    done = [Path(p) for s in status.values() if s["status"] == "done" for p in s["scores"].values()]
    if done:
        write_report(load_cells(done), root / "report")
    return status
