"""MLLM recipes: the same strict YAML-over-dataclasses machinery as pretraining (``genlip.train.recipe``).

Which parameters train is declared here as a learning rate per module group; 0 means frozen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from genlip.run.resources import resolve_deepspeed

# the Hugging Face Trainer's lr_scheduler_type values that take no extra arguments
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay")


@dataclass
class MllmModelRecipe:
    vision: str = ""  # a local vision checkpoint (GenLIP run/checkpoint dir, SigLIP, SigLIP2, AIMv2, CLIP)
    llm: str = ""  # a local causal LM directory (Qwen2.5-*-Instruct); "tiny" = a small random Qwen2 (CPU)
    init_from: str | None = None  # a previous stage's output (finetune starts from the aligned model)
    mode: Literal["resize", "anyres", "native"] = "resize"
    image_size: int | None = None  # resize: the square side; anyres: the tile side (default: the tower's)
    feature_layer: int = -1
    min_image_tokens: int = 16  # native mode budget
    max_image_tokens: int = 576
    max_grid: int = 2  # anyres: up to max_grid x max_grid tiles + the base image


@dataclass
class MllmDataRecipe:
    path: str = ""  # LLaVA JSON/JSONL
    image_root: str = ""
    synth: dict | None = None  # {"dir", "samples", "seed", "set": captions|instruct}: generate if missing
    max_length: int = 2048
    system_prompt: str = "You are a helpful assistant."
    max_skip_fraction: float = 0.1
    num_workers: int = 0


@dataclass
class LearningRates:
    """Per module group; 0 freezes the group."""

    projector: float = 1e-3
    language_model: float = 0.0
    vision_tower: float = 0.0


@dataclass
class LoraRecipe:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05


@dataclass
class MllmTrainRecipe:
    output_dir: str = "runs/mllm"
    epochs: float = 1.0
    max_steps: int = -1
    global_batch: int = 8
    micro_batch: int = 8
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    scheduler: Literal[SCHEDULERS] = "cosine"
    max_grad_norm: float = 1.0
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    cpu_allocator: Literal["retain", "system"] = "retain"  # retain: keep freed memory (genlip.run.runtime)
    deepspeed: str | None = None  # zero2 | zero3 (bundled) | a DeepSpeed JSON path; resolved to a full path at load
    gradient_checkpointing: bool = False
    save_steps: int = 500
    save_total_limit: int = 2
    logging_steps: int = 10
    resume: str = "auto"  # auto | none | a checkpoint directory

    def __post_init__(self) -> None:
        if self.deepspeed:  # checked here, before any model is loaded
            self.deepspeed = str(resolve_deepspeed(self.deepspeed))


@dataclass
class MllmDebugRecipe:
    """Fault injection for tests of the failure paths; never set in a real run."""

    stop_after_step: int = 0  # stop as if killed right after this step's checkpoint (no final/)


@dataclass
class MllmRecipe:
    recipe_kind = "mllm"  # where bundled recipes of this schema live (not a field)
    name: str = "mllm"
    stage: Literal["pretrain", "finetune"] = "pretrain"  # alignment | instruction tuning
    model: MllmModelRecipe = field(default_factory=MllmModelRecipe)
    data: MllmDataRecipe = field(default_factory=MllmDataRecipe)
    lr: LearningRates = field(default_factory=LearningRates)
    lora: LoraRecipe = field(default_factory=LoraRecipe)
    train: MllmTrainRecipe = field(default_factory=MllmTrainRecipe)
    debug: MllmDebugRecipe = field(default_factory=MllmDebugRecipe)
