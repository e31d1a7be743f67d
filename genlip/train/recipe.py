"""Recipes: typed dataclasses are the schema, YAML files hold values, ``a.b=value`` overrides on the command line.

Unknown keys are errors (with a suggestion), values are type-checked, and the fully resolved recipe is written
next to every checkpoint. Stage 1 and stage 2 are two recipes for one training loop.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from genlip.data.sources import SourceSpec
from genlip.runtime import ALLOCATOR_MODES


@dataclass
class ModelRecipe:
    preset: str = "tiny"  # a genlip.config preset
    objective: str = "generative"  # generative (GenLIP) | sigmoid (the SigLIP-style baseline, stage 1 only)
    overrides: dict = field(default_factory=dict)  # GenLIPConfig fields on top of the preset
    init_from: str | None = None  # a checkpoint directory to start from (weights only: stage 2)
    attn_backend: str = "auto"
    loss_impl: str = "plain"  # plain | chunked
    gradient_checkpointing: bool = False
    compile: bool = False


@dataclass
class DataRecipe:
    sources: list[SourceSpec] = field(default_factory=list)
    synth: dict | None = None  # {"dir": ..., "samples": N, "seed": S}: generate this corpus if missing
    tokenizer: str = "auto"  # a tokenizer directory; auto = the synth corpus' tokenizer
    prompt: str = "Describe the image in detail."
    image_size: int = 224  # stage 1 (fixed resolution)
    native: bool = False  # stage 2: native aspect ratio + packing (batches count rows, not samples)
    min_image_tokens: int = 16  # stage 2 smart resize bounds, in patches (x patch_size^2 pixels)
    max_image_tokens: int = 1024
    max_seq_len: int = 16384  # stage 2 row length (tokens)
    pack_window: int = 64  # samples packed together (first-fit decreasing)
    pack_min_fill: float = 0.9  # rows below this fill are re-packed once with the next window
    max_caption_tokens: int = 128
    min_image_size: int = 2
    max_aspect_ratio: float = 200.0
    max_skip_fraction: float = 0.1
    num_workers: int = 1


@dataclass
class OptimRecipe:
    lr: float = 1e-3
    min_lr: float = 1e-6
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.01
    no_decay_norm_bias: bool = False  # the release decays every parameter
    warmup_ratio: float = 0.007
    clip_grad: float = 1.0


@dataclass
class TrainRecipe:
    output_dir: str = "runs/genlip"
    steps: int = 100
    global_batch: int = 8  # samples per optimizer step (stage 2: rows)
    micro_batch: int = 8  # samples per forward on one rank
    seed: int = 0
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    parallel: str = "ddp"  # ddp | fsdp (used when WORLD_SIZE > 1)
    skip_nonfinite: bool = False  # skip (and count) a step with a NaN/inf loss or gradient instead of stopping
    max_nonfinite_skips: int = 10
    cpu_allocator: str = "retain"  # retain (keep freed memory in the process; see genlip.runtime) | system

    def __post_init__(self) -> None:
        if self.cpu_allocator not in ALLOCATOR_MODES:
            raise ValueError(f"train.cpu_allocator must be one of {ALLOCATOR_MODES}, not {self.cpu_allocator!r}")


@dataclass
class CheckpointRecipe:
    every: int = 50
    keep: int = 3
    resume: str = "auto"  # auto | none | a checkpoint directory


@dataclass
class LogRecipe:
    every: int = 1
    tensorboard: bool = True
    wandb_project: str | None = None
    progress: bool = True


@dataclass
class Recipe:
    name: str = "genlip"
    stage: int = 1
    model: ModelRecipe = field(default_factory=ModelRecipe)
    data: DataRecipe = field(default_factory=DataRecipe)
    optim: OptimRecipe = field(default_factory=OptimRecipe)
    train: TrainRecipe = field(default_factory=TrainRecipe)
    checkpoint: CheckpointRecipe = field(default_factory=CheckpointRecipe)
    log: LogRecipe = field(default_factory=LogRecipe)


class RecipeError(ValueError):
    pass


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except RecipeError as e:
                errors.append(str(e))
        raise RecipeError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}")
        return build(tp, value, where)
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, inner, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise RecipeError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
    return value


def build(cls: type, values: dict, where: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a nested dict; unknown keys and wrong types are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {where + '.' if where else ''}{close[0]}?" if close else ""
            raise RecipeError(f"unknown recipe key {path!r}{hint} (known: {sorted(names)})")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"{where or 'recipe'}: {e}") from e


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_override(d: dict, dotted: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML; list items by index: ``data.sources.0.weight=2``)."""
    if "=" not in dotted:
        raise RecipeError(f"override {dotted!r} must look like key.sub=value")
    key, raw = dotted.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    parts = key.split(".")
    cur: Any = d
    for i, p in enumerate(parts[:-1]):
        if isinstance(cur, list):
            if not p.isdigit() or int(p) >= len(cur):
                raise RecipeError(f"override {key!r}: {'.'.join(parts[:i])} has no item {p}")
            cur = cur[int(p)]
        else:
            if p not in cur or cur[p] is None:
                cur[p] = {}
            cur = cur[p]
    last = parts[-1]
    if isinstance(cur, list):
        if not last.isdigit() or int(last) >= len(cur):
            raise RecipeError(f"override {key!r}: no list item {last}")
        cur[int(last)] = value
    else:
        cur[last] = value


def load_recipe(path: str | Path | None, overrides: list[str] = (), cls: type = Recipe) -> Any:
    """Read a YAML recipe (``yaml.safe_load``), apply dotted overrides, validate into ``cls`` (a :class:`Recipe`
    by default; the MLLM harness passes its own schema)."""
    values: dict = {}
    if path is not None:
        text = Path(path).read_text()
        values = yaml.safe_load(text) or {}
        if not isinstance(values, dict):
            raise RecipeError(f"{path}: a recipe must be a mapping at the top level")
    base = to_dict(cls())
    merged = _deep_merge(base, values)
    if "data" in merged and isinstance(merged["data"], dict) and "sources" in merged["data"]:
        merged["data"]["sources"] = values.get("data", {}).get("sources", [])
    for o in overrides:
        apply_override(merged, o)
    _reject_unknown(values, base, "")
    return build(cls, merged)


def _reject_unknown(values: dict, base: dict, where: str) -> None:
    for k, v in values.items():
        path = f"{where}.{k}" if where else k
        if k not in base:
            close = difflib.get_close_matches(k, list(base), n=1)
            raise RecipeError(f"unknown recipe key {path!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
        if isinstance(v, dict) and isinstance(base[k], dict) and k not in ("overrides", "synth"):
            _reject_unknown(v, base[k], path)


def _deep_merge(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("overrides", "synth"):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def save_recipe(recipe: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))


def recipe_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two recipes (dataclasses or dicts), e.g. to warn on resume."""
    a, b = to_dict(old), to_dict(new)
    out = []
    for k in sorted(set(a) | set(b)):
        path = f"{prefix}{k}"
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += recipe_diff(a[k], b[k], path + ".")
        elif a.get(k) != b.get(k):
            out.append(f"{path}: {a.get(k)!r} -> {b.get(k)!r}")
    return out
