"""The pretraining recipe's schema (stage 1 and stage 2 are two recipes for one training loop); loading, overrides
and validation are the run layer's (:mod:`genlip.run.config`)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from genlip.config import PRESETS
from genlip.data.sources import SourceSpec
from genlip.run.config import load_recipe as _load


@dataclass
class ModelRecipe:
    # a genlip.config preset; with init_from the architecture is the checkpoint's: null, or a preset it must match
    preset: str | None = "tiny"
    objective: Literal["generative", "sigmoid"] = "generative"  # sigmoid: the SigLIP-style baseline (stage 1)
    overrides: dict = field(default_factory=dict)  # GenLIPConfig fields on top of the preset
    init_from: str | None = None  # a checkpoint directory to start from (weights only: stage 2)
    attn_backend: Literal["auto", "segments", "dense", "flex"] = "auto"
    loss_impl: Literal["plain", "chunked"] = "plain"
    gradient_checkpointing: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            close = difflib.get_close_matches(self.preset, list(PRESETS), n=1)
            raise ValueError(f"model.preset {self.preset!r} is not one of {', '.join(PRESETS)}"
                             + (f"; did you mean {close[0]!r}?" if close else ""))


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
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    parallel: Literal["ddp", "fsdp"] = "ddp"  # used when WORLD_SIZE > 1
    skip_nonfinite: bool = False  # skip (and count) a step with a NaN/inf loss or gradient instead of stopping
    max_nonfinite_skips: int = 10
    cpu_allocator: Literal["retain", "system"] = "retain"  # retain: keep freed memory (genlip.run.runtime)


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
class DebugRecipe:
    """Fault injection for tests of the failure paths; never set in a real run."""

    nan_steps: list[int] = field(default_factory=list)  # these optimizer steps (from 1) get a NaN loss and gradients


@dataclass
class Recipe:
    recipe_kind = "genlip"  # where bundled recipes of this schema live (not a field)
    name: str = "genlip"
    stage: Literal[1, 2] = 1
    model: ModelRecipe = field(default_factory=ModelRecipe)
    data: DataRecipe = field(default_factory=DataRecipe)
    optim: OptimRecipe = field(default_factory=OptimRecipe)
    train: TrainRecipe = field(default_factory=TrainRecipe)
    checkpoint: CheckpointRecipe = field(default_factory=CheckpointRecipe)
    log: LogRecipe = field(default_factory=LogRecipe)
    debug: DebugRecipe = field(default_factory=DebugRecipe)

    def __post_init__(self) -> None:
        if self.model.objective == "sigmoid" and self.data.native:
            raise ValueError("model.objective=sigmoid trains at a fixed resolution (stage 1); set data.native=false")


def load_recipe(path: str | Path | None, overrides: list[str] = (), cls: type = Recipe) -> Any:
    """A pretraining recipe (or, with ``cls``, another schema) from a YAML file and dotted overrides."""
    return _load(path, overrides, cls)
