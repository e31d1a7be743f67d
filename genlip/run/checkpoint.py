"""Checkpoints that describe themselves and survive interruption.

``run_dir/checkpoints/step_00000100/`` holds ``config.json`` + ``model.safetensors`` (loads with
``from_pretrained``), ``optimizer.pt``, ``trainer_state.json`` (step, schedule, data position of every stream, skip
counts), ``rng.pt`` (every rank's RNG states) and ``recipe.yaml`` (the resolved recipe). A checkpoint is written
into a temporary directory and renamed into place only when complete, so an interrupted save leaves the previous
checkpoint intact; ``latest`` is replaced atomically; only the last ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from genlip.run import dist as D
from genlip.run.config import save_recipe

log = logging.getLogger(__name__)
STEP_PREFIX = "step_"


def _state_dict_options(**kw):
    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def rng_state() -> dict:
    """Every RNG of this process as plain tensors and numbers (so it loads with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
             "python": [version, torch.tensor(py_state, dtype=torch.int64), py_gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in py_state.tolist()), py_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, trainer_state: dict,
         recipe: Any, keep: int, extra_files=None) -> Path | None:
    """Collective: every rank calls it; rank 0 writes. ``extra_files(dir)`` adds files (e.g. the tokenizer) before
    the checkpoint is renamed into place. Returns the checkpoint path on rank 0."""
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_state_dict_options())
    rngs = D.all_gather_object(rng_state())
    final = None
    if D.is_main():
        root = run_dir / "checkpoints"
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"{STEP_PREFIX}{step:08d}"
        tmp = root / f".tmp_{final.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        D.unwrap(model).save_pretrained(tmp, state_dict={k: v.contiguous() for k, v in model_sd.items()})
        torch.save(optim_sd, tmp / "optimizer.pt")
        torch.save(rngs, tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
        save_recipe(recipe, tmp / "recipe.yaml")
        if extra_files is not None:
            extra_files(tmp)
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _atomic_write(root / "latest", final.name)
        for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        log.info("saved checkpoint %s", final)
    D.barrier()
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)
                  and (p / "trainer_state.json").exists())


REPLACED_PREFIX = "replaced-"


def set_aside(run_dir: str | Path, names: tuple[str, ...]) -> Path | None:
    """Before a run starts over in a directory that holds an earlier run (``resume=none``): move the earlier run's
    files (the entries matching the glob patterns ``names``: what a run writes) into ``run_dir/replaced-<time>/``.
    Nothing is deleted, anything else in ``run_dir`` stays, and nothing moved is taken for the new run's: a resume,
    the newest-checkpoint lookups (captioning, export, a GenLIP run as an MLLM tower) and checkpoint pruning read
    ``run_dir`` only. Returns where they went, or None when there was nothing. Call it from one process."""
    run_dir = Path(run_dir)
    old = sorted({p for n in names for p in run_dir.glob(n)}) if run_dir.is_dir() else []
    if not old:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = run_dir / f"{REPLACED_PREFIX}{stamp}", 1
    while dest.exists():
        n += 1
        dest = run_dir / f"{REPLACED_PREFIX}{stamp}-{n}"
    dest.mkdir()
    for p in old:
        p.rename(dest / p.name)
    return dest


def find_resume(run_dir: Path, resume: str) -> Path | None:
    """``auto``: the newest complete checkpoint of this run (or none); ``none``; or an explicit directory."""
    if resume == "none":
        return None
    if resume != "auto":
        p = Path(resume)
        if not (p / "trainer_state.json").exists():
            raise FileNotFoundError(f"checkpoint.resume={resume!r} is not a checkpoint directory")
        return p
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


@dataclass
class RunInfo:
    """What a run directory says about itself: its newest checkpoint, the step it reached, the steps its recipe asks
    for, the samples seen, and the resolved recipe (a dict)."""

    checkpoint: Path
    step: int
    steps: int
    samples: int
    recipe: dict

    @property
    def finished(self) -> bool:
        return self.step >= self.steps


def run_info(run_dir: str | Path, checkpoint: Path | None = None) -> RunInfo | None:
    """The newest checkpoint's state (or ``checkpoint``'s), or None for a run without one."""
    ckpt = checkpoint or (list_checkpoints(Path(run_dir)) or [None])[-1]
    if ckpt is None:
        return None
    state = json.loads((ckpt / "trainer_state.json").read_text())
    recipe = yaml.safe_load((ckpt / "recipe.yaml").read_text()) if (ckpt / "recipe.yaml").exists() else {}
    return RunInfo(ckpt, int(state.get("step", 0)), int(recipe.get("train", {}).get("steps", 0)),
                   int(state.get("samples", 0)), recipe)


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore weights, optimizer and this rank's RNG states; returns the trainer state."""
    model_sd = load_file(str(path / "model.safetensors"))
    optim_sd = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                   options=_state_dict_options())
    rngs = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
    rank = D.world()[0]
    if rank < len(rngs):
        set_rng_state(rngs[rank])
    return json.loads((path / "trainer_state.json").read_text())


def resolve_weights_dir(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (its newest checkpoint)."""
    p = Path(path)
    if (p / "model.safetensors").exists():
        return p
    ckpts = list_checkpoints(p)
    if ckpts:
        return ckpts[-1]
    why = "no such directory" if not p.exists() else ("neither a checkpoint directory (model.safetensors) nor a run "
                                                      "directory with checkpoints; run the stage-1 recipe first")
    raise FileNotFoundError(f"{path}: {why}")


def load_weights(path: str | Path, model: nn.Module) -> Path:
    """Weights only (stage 2 starting from stage 1): missing or unexpected tensors are errors."""
    path = resolve_weights_dir(path)
    sd = load_file(str(path / "model.safetensors"))
    missing, unexpected = D.unwrap(model).load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise KeyError(f"init_from {path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return path
