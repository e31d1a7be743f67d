"""MLLM recipes: the same strict YAML-over-dataclasses machinery as pretraining (``genlip.train.recipe``).

Which parameters train is declared here as a learning rate per module group; 0 means frozen.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Literal

from genlip.run.config import bounded
from genlip.run.resources import resolve_deepspeed

BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def zero_stage(config_path: str) -> int:
    """The ZeRO stage a DeepSpeed JSON config asks for (0 when it names none), after checking that the config is one
    the MLLM trainer can run: a one-line ``ValueError`` for JSON that does not parse, a stage other than 0-3, batch
    sizes that are not ``"auto"`` (the recipe's ``train.global_batch`` / ``micro_batch`` fill them), an ``optimizer``
    or ``scheduler`` section (it would replace the recipe's AdamW groups and schedule)."""
    where = f"train.deepspeed: {config_path}"
    try:
        with open(config_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not a UTF-8 text file ({e.reason})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{where}: a DeepSpeed config is a JSON object, got {type(cfg).__name__}")
    zero = cfg.get("zero_optimization", {})
    stage = zero.get("stage", 0) if isinstance(zero, dict) else None
    if type(stage) is not int or not 0 <= stage <= 3:
        raise ValueError(f"{where}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    not_auto = [k for k in BATCH_KEYS if cfg.get(k) != "auto"]
    if not_auto:
        raise ValueError(f"{where}: set {', '.join(f'{k!r}' for k in not_auto)} to \"auto\" (the recipe's "
                         "train.global_batch and train.micro_batch decide the batch)")
    own = [k for k in ("optimizer", "scheduler") if k in cfg]
    if own:
        raise ValueError(f"{where}: remove {' and '.join(repr(k) for k in own)}: the recipe's AdamW (one group per "
                         "module group, lr.*) and train.scheduler are what the trainer steps")
    return stage


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
    min_image_tokens: int = bounded(16, ge=1)  # native mode budget
    max_image_tokens: int = bounded(576, ge=1)
    max_grid: int = bounded(2, ge=1)  # anyres: up to max_grid x max_grid tiles + the base image

    def __post_init__(self) -> None:
        if self.min_image_tokens > self.max_image_tokens:
            raise ValueError(f"model.min_image_tokens {self.min_image_tokens} is above model.max_image_tokens "
                             f"{self.max_image_tokens}")


@dataclass
class MllmDataRecipe:
    path: str = ""  # LLaVA JSON/JSONL
    image_root: str = ""
    synth: dict | None = None  # {"dir", "samples", "seed", "set": captions|instruct}: generate if missing
    max_length: int = bounded(2048, ge=1)
    system_prompt: str = "You are a helpful assistant."
    # chat: the LLM's chat template; plain: LLaVA's alignment format (image tokens + caption + newline, no roles)
    template: Literal["chat", "plain"] = "chat"
    max_skip_fraction: float = bounded(0.1, ge=0, le=1)
    num_workers: int = bounded(0, ge=0)


@dataclass
class LearningRates:
    """Per module group; 0 freezes the group."""

    projector: float = bounded(1e-3, ge=0)
    language_model: float = bounded(0.0, ge=0)
    vision_tower: float = bounded(0.0, ge=0)


@dataclass
class LoraRecipe:
    enabled: bool = False
    r: int = bounded(16, ge=1)
    alpha: int = bounded(32, gt=0)
    dropout: float = bounded(0.05, ge=0, lt=1)


@dataclass
class MllmTrainRecipe:
    output_dir: str = "runs/mllm"
    epochs: float = bounded(1.0, gt=0)
    max_steps: int = -1
    global_batch: int = bounded(8, ge=1)
    micro_batch: int = bounded(8, ge=1)  # at most this many per GPU and forward pass
    batch_rounding: Literal["nearest", "exact"] = "nearest"  # as genlip-pretrain's (genlip.run.batching)
    warmup_ratio: float = bounded(0.03, ge=0, lt=1)
    weight_decay: float = bounded(0.0, ge=0)
    scheduler: Literal[SCHEDULERS] = "cosine"
    max_grad_norm: float = bounded(1.0, gt=0)
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    cpu_allocator: Literal["retain", "system"] = "retain"  # retain: keep freed memory (genlip.run.runtime)
    deepspeed: str | None = None  # zero2 | zero3 (bundled) | a DeepSpeed JSON path; resolved to a full path at load
    gradient_checkpointing: bool = False
    # compile each LLM decoder layer (torch.compile, dynamic shapes): the layer's norms, rotary embedding and SwiGLU
    # fuse into a few kernels instead of one per operation; not with ZeRO-3 (its parameter hooks are not compiled)
    compile: bool = False
    # plain: the model's own loss over [tokens, vocab] logits (fp32 upcast); chunked: the LM head runs on the positions
    # that predict a supervised token only, chunk by chunk (genlip.loss), so no [tokens, vocab] tensor exists; not
    # with ZeRO-3 (the head's weight is a shard outside its module)
    loss_impl: Literal["plain", "chunked"] = "plain"
    save_steps: int = bounded(500, ge=1)
    save_total_limit: int = bounded(2, ge=1)
    logging_steps: int = bounded(10, ge=1)
    # the Trainer's loggers: tensorboard (the `tensorboard` extra; events in output_dir/runs/), wandb, ... ; a PNG of
    # the loss and learning-rate curves is written to final/curves.png in any case
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = field(default_factory=list)
    resume: str = "auto"  # auto | none | a checkpoint directory

    def __post_init__(self) -> None:
        if self.max_steps != -1 and self.max_steps < 1:  # 0 trained one step, -5 a whole epoch
            raise ValueError(f"train.max_steps: {self.max_steps} is out of range (-1: train.epochs decides, or at "
                             "least 1)")
        if self.resume not in ("auto", "none") and not os.path.isfile(os.path.join(self.resume, "trainer_state.json")):
            raise ValueError(f"train.resume (--resume): {self.resume!r} is not a checkpoint directory (auto, none, "
                             "or a run's checkpoint-N directory)")
        if self.deepspeed:  # checked here, before any model is loaded
            self.deepspeed = str(resolve_deepspeed(self.deepspeed))
            if zero_stage(self.deepspeed) == 3 and (self.compile or self.loss_impl == "chunked"):
                raise ValueError("train.compile=true is not supported with ZeRO-3 (DeepSpeed's parameter hooks "
                                 "around compiled layers are untested here); use zero2 or train.compile=false"
                                 if self.compile else
                                 "train.loss_impl=chunked is not supported with ZeRO-3 (the LM head's weight is a "
                                 "shard outside its module); use zero2 or train.loss_impl=plain")


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
