"""The pretraining recipe's schema (stage 1 and stage 2 are two recipes for one training loop); loading, overrides
and validation are the run layer's (:mod:`genlip.run.config`)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from genlip.config import PRESETS
from genlip.data.sources import SourceSpec
from genlip.run.config import bounded
from genlip.run.config import load_recipe as _load


@dataclass
class ModelRecipe:
    # a genlip.config preset; with init_from the architecture is the checkpoint's: null, or a preset it must match
    preset: str | None = "tiny"
    objective: Literal["generative", "sigmoid"] = "generative"  # sigmoid: the SigLIP-style baseline (stage 1)
    overrides: dict = field(default_factory=dict)  # GenLIPConfig fields on top of the preset
    init_from: str | None = None  # a checkpoint directory to start from (weights only: stage 2)
    attn_backend: Literal["auto", "prefix", "segments", "dense", "flex"] = "auto"
    loss_impl: Literal["plain", "chunked"] = "plain"
    # activation checkpointing of the blocks: none; selective (keep matmul and attention outputs, recompute the
    # elementwise work); full (keep only each block's input)
    activation_checkpointing: Literal["none", "selective", "full"] = "none"
    compile: bool = False  # torch.compile the blocks
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    # blocks: each block its own graph (one compilation, reused by every layer); transformer: the blocks and the final
    # norm as one graph (one guard check and one autograd node per step instead of one per block: less host work per
    # step, longer compilation)
    compile_scope: Literal["blocks", "transformer"] = "blocks"

    def __post_init__(self) -> None:
        if self.compile_scope == "transformer" and self.activation_checkpointing != "none":
            raise ValueError("model.compile_scope=transformer needs model.activation_checkpointing=none (checkpointed "
                             "blocks inside one compiled graph do not trace); use model.compile_scope=blocks")
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
    image_size: int = bounded(224, ge=1)  # stage 1 (fixed resolution)
    native: bool = False  # stage 2: native aspect ratio + packing (batches count rows, not samples)
    min_image_tokens: int = bounded(16, ge=1)  # stage 2 smart resize bounds, in patches (x patch_size^2 pixels)
    max_image_tokens: int = bounded(1024, ge=1)
    max_seq_len: int = bounded(16384, ge=1)  # stage 2 row length (tokens)
    pack_window: int = bounded(64, ge=1)  # samples packed together (first-fit decreasing)
    pack_min_fill: float = bounded(0.9, ge=0, le=1)  # rows below this fill are re-packed once with the next window
    # captions longer than this are cut (counted as caption_cut); null: never cut (the paper's stage 1); in stage 2
    # a caption is also cut to what is left of its row
    max_caption_tokens: int | None = bounded(128, ge=1)
    min_image_size: int = bounded(2, ge=1)
    max_aspect_ratio: float = bounded(200.0, ge=1)
    # above this share of a loader stream's records (or of one source's, in a mix) the run stops
    max_skip_fraction: float = bounded(0.1, ge=0, le=1)
    skip_check_after: int = bounded(200, ge=1)  # records a loader stream reads before max_skip_fraction is judged
    num_workers: int = bounded(1, ge=0)

    def __post_init__(self) -> None:
        names = [s.name for s in self.sources if isinstance(s, SourceSpec)]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:  # each source's read position is saved under its name: two of one name would resume as one
            raise ValueError(f"data.sources: two sources are named {twice[0]!r}; give each its own name (a source's "
                             "name defaults to its path)")
        if self.min_image_tokens > self.max_image_tokens:
            raise ValueError(f"data.min_image_tokens {self.min_image_tokens} is above data.max_image_tokens "
                             f"{self.max_image_tokens}")


@dataclass
class OptimRecipe:
    lr: float = bounded(1e-3, gt=0)
    min_lr: float = bounded(1e-6, ge=0)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = bounded(1e-8, gt=0)
    weight_decay: float = bounded(0.01, ge=0)
    no_decay_norm_bias: bool = False  # the release decays every parameter
    warmup_ratio: float = bounded(0.007, ge=0, lt=1)
    clip_grad: float = bounded(1.0, gt=0)

    def __post_init__(self) -> None:
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1) (AdamW's beta1, beta2), got {self.betas}")


@dataclass
class TrainRecipe:
    output_dir: str = "runs/genlip"
    steps: int = bounded(100, ge=1)
    global_batch: int = bounded(8, ge=1)  # samples per optimizer step (stage 2: rows)
    micro_batch: int = bounded(8, ge=1)  # at most this many samples per forward on one rank
    # nearest: a global batch that does not split over the world size becomes the nearest that does, and the steps
    # are rescaled to keep steps x global_batch (genlip.run.batching); exact: refuse instead
    batch_rounding: Literal["nearest", "exact"] = "nearest"
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    parallel: Literal["ddp", "fsdp"] = "ddp"  # used when WORLD_SIZE > 1
    # bf16: parameters gathered as bf16 for compute, fp32 shards as the optimizer's master weights, gradients
    # reduced in fp32 (FSDP2's MixedPrecisionPolicy); several processes need parallel=fsdp, one process shards over
    # a group of one
    param_dtype: Literal["fp32", "bf16"] = "fp32"
    skip_nonfinite: bool = False  # skip (and count) a step with a NaN/inf loss or gradient instead of stopping
    max_nonfinite_skips: int = bounded(10, ge=0)
    cpu_allocator: Literal["retain", "system"] = "retain"  # retain: keep freed memory (genlip.run.runtime)


@dataclass
class CheckpointRecipe:
    every: int = bounded(50, ge=1)
    keep: int = bounded(3, ge=1)
    resume: str = "auto"  # auto | none | a checkpoint directory

    def __post_init__(self) -> None:
        if self.resume not in ("auto", "none") and not (Path(self.resume) / "trainer_state.json").is_file():
            raise ValueError(f"checkpoint.resume (--resume) {self.resume!r} is not a checkpoint directory (no "
                             "trainer_state.json); use auto, none or a checkpoints/step_* directory")


@dataclass
class LogRecipe:
    every: int = bounded(1, ge=1)
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
        if self.model.preset and not self.model.init_from and not self.data.native:
            patch = int(self.model.overrides.get("patch_size", PRESETS[self.model.preset].get("patch_size", 16)))
            if self.data.image_size % patch:
                raise ValueError(f"data.image_size {self.data.image_size} is not a multiple of the patch size {patch}")


def load_recipe(path: str | Path | None, overrides: list[str] = (), cls: type = Recipe) -> Any:
    """A pretraining recipe (or, with ``cls``, another schema) from a YAML file and dotted overrides."""
    return _load(path, overrides, cls)
