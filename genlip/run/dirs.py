"""Where generated data lives: ``$GENLIP_HOME`` (default ``~/.cache/genlip``) and directories made once, safely,
by the first rank that needs them, also when several jobs on one machine start at once."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on Linux/macOS: no lock between jobs (ranks of one job still wait for rank 0)
    fcntl = None

from genlip.data.sources import DataError
from genlip.run import dist as D


def genlip_home() -> Path:
    return Path(os.environ.get("GENLIP_HOME", Path.home() / ".cache" / "genlip"))


@contextlib.contextmanager
def _exclusive(lock: Path, waiting: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``lock`` (made if missing, left in place: removing it would let a job
    that opened it lock a file no longer there); print ``waiting`` when another process holds it."""
    if fcntl is None:
        yield
        return
    with open(lock, "a") as f:
        locked = True
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            D.print0(waiting)
            fcntl.flock(f, fcntl.LOCK_EX)  # as long as the other job takes (its ranks wait at their barrier)
        except OSError:  # a file system without locks (some network mounts): as before, no lock between jobs
            locked = False
        try:
            yield
        finally:
            if locked:
                fcntl.flock(f, fcntl.LOCK_UN)


def generated_dir(template: str, samples: int, seed: int, marker: str, make, what: str) -> Path:
    """A generated-data directory made once: rank 0 writes it into ``<dir>.partial`` with ``make(tmp)`` and renames it
    into place (an interrupted generation never leaves a half corpus); every rank waits and returns the directory.
    Jobs that start at once on one machine take turns through ``<dir>.lock``: the first makes it, the others wait
    and use it. ``template`` may use ``$GENLIP_HOME``, ``{samples}`` and ``{seed}``; ``marker`` is a file the
    finished directory holds, with the ``samples`` and ``seed`` it was made with."""
    raw = template.format(samples=samples, seed=seed)
    out = Path(os.path.expandvars(raw.replace("$GENLIP_HOME", str(genlip_home())))).expanduser()
    if D.is_main() and not (out / marker).exists():
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # GENLIP_HOME (or a dir above the data) is a file, or not writable
            raise DataError(f"cannot make {out.parent} for the generated data: {e.strerror} (set GENLIP_HOME "
                            f"or the recipe's data dir to a writable directory)") from None
        with _exclusive(out.with_name(out.name + ".lock"), f"waiting for another job making {out}"):
            if not (out / marker).exists():  # not made by a job this one waited for
                D.print0(f"generating {what} ({samples} samples) in {out} (first use only)")
                tmp = out.with_name(out.name + ".partial")
                shutil.rmtree(tmp, ignore_errors=True)
                make(tmp)
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
