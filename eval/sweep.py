"""Sweeps: a grid of encoders x LLMs x protocols x suites. Each cell trains its MLLM (alignment, then instruction
tuning) or reuses a finished one, then evaluates it; finished work is skipped on re-run, and a failed cell is
reported without stopping the others. The report compares every finished cell (`genlip-eval report OUT` again).

Before anything runs, every cell's recipes, overrides, encoder and LLM are checked as genlip-mllm would check them,
and a finished stage that the grid now describes differently (another encoder, learning rate, override, or an edit
inside a recipe file) is refused: its result would pass for the new experiment's. Give such a grid another `out`, or
delete the stage's directory. An evaluation runs again where the grid's `eval` limit or generation length differ from
its saved scores'.

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
from genlip.run.config import RecipeError, bounded, load_config, load_recipe, recipe_diff, to_dict
from genlip.run.resources import ResourceNotFound, resolve
from mllm.recipe import MllmRecipe
from mllm.train import check_data, check_model_paths, check_packages, finished_changes, plan_steps


@dataclass
class EncoderEntry:
    path: str
    image_size: int | None = None  # default: the tower's own resolution


@dataclass
class ProtocolEntry:
    mode: Literal["resize", "anyres", "native"] = "resize"
    lr_vision: float = bounded(0.0, ge=0)  # 0 = the encoder frozen


@dataclass
class StageOverrides:
    pretrain: list[str] = field(default_factory=list)
    finetune: list[str] = field(default_factory=list)


@dataclass
class EvalEntry:
    limit: int | None = bounded(None, ge=1)
    max_new_tokens: int | None = bounded(None, ge=1)
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


def _stage_overrides(cell: dict, grid: dict, root: Path) -> dict[str, list[str]]:
    """The ``genlip-mllm`` overrides of each stage of ``cell``: the cell's own, then the grid's for that stage."""
    d = root / "cells" / cell["name"]
    # the encoder's own resolution unless the grid sets one (a recipe's value would not fit every tower)
    pre = [f"model.vision={cell['vision']}", f"model.llm={cell['llm_path']}", f"model.mode={cell['mode']}",
           f"train.output_dir={d / 'pretrain'}", f"model.image_size={cell['image_size'] or 'null'}"]
    fin = [f"model.init_from={d / 'pretrain' / 'final'}", f"lr.vision_tower={cell['lr_vision']}",
           f"train.output_dir={d / 'finetune'}"]
    return {"pretrain": pre + list(grid["overrides"].get("pretrain", [])),
            "finetune": fin + list(grid["overrides"].get("finetune", []))}


def _settings(cell: dict, grid: dict) -> dict[str, dict]:
    """What each training stage of ``cell`` trains: recorded with its output, compared when the grid is run again."""
    pre = {"vision": cell["vision"], "image_size": cell["image_size"], "llm": cell["llm_path"], "mode": cell["mode"],
           "recipe": grid["pretrain_recipe"], "overrides": list(grid["overrides"].get("pretrain", []))}
    fin = {"pretrain": pre, "lr_vision": cell["lr_vision"], "recipe": grid["finetune_recipe"],
           "overrides": list(grid["overrides"].get("finetune", []))}
    return {"pretrain": pre, "finetune": fin}


def _finished(d: Path, stage: str) -> bool:
    return (d / stage / "final" / "genlip_mllm_image.json").exists()


def check_grid(grid: dict, root: Path) -> None:
    """Before any cell runs, a :class:`RecipeError` (one line, exit code 2) for: a stage recipe or override that
    ``genlip-mllm`` would refuse (a name, key or value), an encoder or LLM it could not load (a path, a tower that
    does not fit the protocol's mode or the image size), and a finished stage of a cell that the grid now describes
    differently (its result would be reported as the new experiment's)."""
    for cell in cells(grid):
        ov = _stage_overrides(cell, grid, root)
        where = f"cell {cell['name']}"
        d = root / "cells" / cell["name"]
        recorded = json.loads((d / "cell.json").read_text()) if (d / "cell.json").exists() else {}
        now = _settings(cell, grid)
        for stage in ("pretrain", "finetune"):  # the first changed stage: a changed pretraining changes the rest
            try:
                recipe = load_recipe(resolve(grid[f"{stage}_recipe"], "mllm"), ov[stage], MllmRecipe)
            except (RecipeError, ResourceNotFound) as e:
                raise RecipeError(f"{where}, {stage}: {e}") from None
            if recipe.stage != stage:
                raise RecipeError(f"{where}: {stage}_recipe {grid[f'{stage}_recipe']!r} is a {recipe.stage} recipe")
            if _finished(d, stage):
                # the grid's settings as recorded, then the recipe the stage saved (which sees edits made inside a
                # recipe file); its data and models are not read again (they may have been cleaned up since)
                diff = recipe_diff(recorded[stage], now[stage]) if stage in recorded else []
                plan_steps(recipe, 1)  # the sweep runs each stage as one process
                # the finetuning's init_from is the cell's own pretraining (cell.json records what that was): its
                # path changes when the sweep's directory is moved, not what was trained
                diff = diff or finished_changes(recipe, ("model.init_from",) if stage == "finetune" else ()) or []
                if diff:
                    again = d if stage == "pretrain" else d / stage
                    raise RecipeError(f"{where}: its finished {stage} stage was trained with other settings "
                                      f"({'; '.join(diff)}); give the grid another `out`, or delete {again} to "
                                      "train it again")
                continue
            try:
                check_packages(recipe)
                check_data(recipe)
                if stage == "pretrain":  # the finetuning's model is the pretraining's output
                    check_model_paths(recipe)
            except RecipeError as e:
                raise RecipeError(f"{where}, {stage}: {e}") from None


def _record(d: Path, stage: str, settings: dict) -> None:
    f = d / "cell.json"
    recorded = json.loads(f.read_text()) if f.exists() else {}
    recorded[stage] = settings[stage]
    f.write_text(json.dumps(recorded, indent=1))


def _mllm(stage: str, recipe: str, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", "mllm.cli", stage, "--recipe", recipe, *overrides]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"genlip-mllm {stage} failed (exit {p.returncode}): {tail}")


def run_cell(cell: dict, grid: dict, root: Path) -> dict:
    d = root / "cells" / cell["name"]
    d.mkdir(parents=True, exist_ok=True)
    ov, settings = _stage_overrides(cell, grid, root), _settings(cell, grid)
    steps = []
    for stage in ("pretrain", "finetune"):
        if not _finished(d, stage):
            _mllm(stage, grid[f"{stage}_recipe"], ov[stage])
            steps.append(stage)
        _record(d, stage, settings)  # what the stage's output holds (check_grid compares it on the next run)
    scores = {}
    for suite in grid["suites"]:
        target = d / "eval" / suite
        # lmms-eval runs again where the limit, generation length or model differ from the saved scores', and
        # always after the model was (re)trained in this run
        res = run_suite(d / "finetune" / "final", suite, target, grid["eval"].get("limit"),
                        grid["eval"].get("max_new_tokens"), tasks_dir=grid["eval"].get("tasks_dir"),
                        reuse="finetune" not in steps, batch_size=grid["eval"].get("batch_size", 1))
        if not res.get("reused"):
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
    check_grid(grid, root)
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
