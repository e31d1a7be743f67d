"""What every training command does around its work: load the recipe (a user's mistake is one line and exit code
2, before anything is built), print it on request, run, turn expected failures into one line and exit code 1, and
always leave the process group cleanly."""

from __future__ import annotations

import dataclasses
import os
import sys
import textwrap
import typing
from collections.abc import Callable
from typing import Any, Literal

import torch
import yaml

from genlip.loss import environment_problem
from genlip.run import dist as D
from genlip.run.config import RecipeError, load_recipe, to_dict
from genlip.run.resources import ResourceNotFound, bundled_names, resolve


def quiet_deepspeed_on_cpu() -> None:
    """Without CUDA, tell DeepSpeed (which accelerate imports on a model's save or load) that the CPU is meant; else
    it warns, mid-run, that it found no GPU."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def load_for_command(prog: str, name: str, kind: str, overrides: list[str], cls: type) -> Any:
    """What every training command does first: a recipe path or bundled name, its overrides, validated; a user's
    mistake is one line ``<prog>: bad recipe: ...`` (or ``bad environment``: a project variable with a value it does
    not take) and exit code 2, before anything is built."""
    if (problem := environment_problem()) is not None:
        print(f"{prog}: bad environment: {problem}", file=sys.stderr)
        raise SystemExit(2)
    try:
        return load_recipe(resolve(name, kind), overrides, cls)
    except (RecipeError, ResourceNotFound) as e:
        print(f"{prog}: bad recipe: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def recipe_help(kind: str) -> str:
    return f"a recipe YAML path, or a bundled recipe: {', '.join(bundled_names(kind))} (default: %(default)s)"


def print_config(obj: Any) -> None:
    """The resolved config as YAML (``--print-recipe``)."""
    print(yaml.safe_dump(to_dict(obj), sort_keys=False))


def execute(prog: str, fn: Callable[[Any], Any], recipe: Any, failures: tuple[type[BaseException], ...]) -> int:
    """``fn(recipe)``: 0 when it returns; 2 with one line for a recipe mistake found late (a checkpoint that does not
    fit the recipe, say); 1 with one line for the expected ``failures``; anything else is a bug and keeps its
    traceback. The distributed process group is torn down in every case."""
    quiet_deepspeed_on_cpu()
    try:
        fn(recipe)
    except RecipeError as e:
        print(f"{prog}: bad recipe: {e}", file=sys.stderr)
        return 2
    except failures as e:
        msg = str(e).strip()
        if "Original Traceback" in msg:  # raised in a data-loader worker: its own last line, without the type
            msg = msg.splitlines()[-1]
            prefix = f"{type(e).__module__}.{type(e).__name__}: "
            msg = msg[len(prefix):] if msg.startswith(prefix) else msg
        print(f"{prog}: {type(e).__name__}: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before training started, or a second one (the first saves and returns)
        print(f"\n{prog}: interrupted, without saving (a run continues from its last checkpoint: give the same "
              "command again)", file=sys.stderr)
        return 130
    except RuntimeError as e:
        if D.world()[2] > 1 and peer_gone(e):  # another rank stopped (its own error is its one line): say so
            print(f"{prog}: rank {D.world()[0]} stopped: another process of this run ended first (its message is "
                  "above)", file=sys.stderr)
            return 1
        raise
    finally:
        D.cleanup()
    return 0


def peer_gone(e: BaseException) -> bool:
    """A collective failed because another process of the run is gone (gloo: the connection closed; NCCL: the
    backend's error), not because of this process."""
    text = str(e)
    return isinstance(e, torch.distributed.DistBackendError) or "closed by peer" in text or "reset by peer" in text


def _key(f: dataclasses.Field, tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return f"{f.name}={{{'|'.join(str(a) for a in typing.get_args(tp))}}}"
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
    return f"{f.name}={default}"


def schema_keys(cls: type) -> str:
    """Every key of a recipe schema with its default (choices in braces), one section a paragraph, for ``--help``."""
    hints = typing.get_type_hints(cls)
    top, sections = [], []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            inner = typing.get_type_hints(tp)
            text = f"{f.name}: " + ", ".join(_key(g, inner[g.name]) for g in dataclasses.fields(tp))
            sections.append(textwrap.fill(text, 116, initial_indent="  ", subsequent_indent="      ",
                                           break_long_words=False))
        else:
            top.append(_key(f, tp))
    return "\n".join([textwrap.fill(", ".join(top), 116, initial_indent="  ", subsequent_indent="  "), *sections])
