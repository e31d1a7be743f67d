"""Where generated data lives: ``$GENLIP_HOME`` (default ``~/.cache/genlip``) and directories made once, safely,
by the first rank that needs them."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from genlip.data.sources import DataError
from genlip.run import dist as D


def genlip_home() -> Path:
    return Path(os.environ.get("GENLIP_HOME", Path.home() / ".cache" / "genlip"))


def generated_dir(template: str, samples: int, seed: int, marker: str, make, what: str) -> Path:
    """A generated-data directory made once: rank 0 writes it into ``<dir>.partial`` with ``make(tmp)`` and renames it
    into place (an interrupted generation never leaves a half corpus); every rank waits and returns the directory.
    ``template`` may use ``$GENLIP_HOME``, ``{samples}`` and ``{seed}``; ``marker`` is a file the finished
    directory holds, with the ``samples`` and ``seed`` it was made with."""
    raw = template.format(samples=samples, seed=seed)
    out = Path(os.path.expandvars(raw.replace("$GENLIP_HOME", str(genlip_home())))).expanduser()
    if D.is_main() and not (out / marker).exists():
        D.print0(f"generating {what} ({samples} samples) in {out} (first use only)")
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        make(tmp)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out, ignore_errors=True)
        os.rename(tmp, out)
    D.barrier()
    if not (out / marker).exists():
        raise DataError(f"the generated data {out} is missing (rank 0 should have written it)")
    info = json.loads((out / marker).read_text())
    if (info["samples"], info["seed"]) != (samples, seed):
        raise DataError(f"{out} holds {info['samples']} samples (seed {info['seed']}), not {samples} (seed {seed}); "
                        f"use a dir with {{samples}} and {{seed}} in it")
    return out


def output_dir_problem(out: str | Path, own: Iterable[str]) -> str | None:
    """Why a command cannot write its output directory ``out`` (one line), or None: it is new, empty, or holds only
    entries named in ``own`` (an earlier output of the command, which it replaces). A file, or a directory holding
    anything else (the user's files), is refused rather than written into."""
    out, own = Path(out), set(own)
    if out.exists() and not out.is_dir():
        return f"{out} is a file, not a directory"
    others = sorted(p.name for p in out.iterdir() if p.name not in own) if out.is_dir() else []
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        return f"{out} holds files this command did not write ({shown})"
    return None
