"""The pipeline's experiment definition: what ``genlip-eval pipeline`` compares, as a typed config.

YAML, every key optional (``recipes/pipeline/cpu_compare.yaml`` is the bundled default)::

    out: runs/pipeline
    stage1: {recipe: stage1_tiny_cpu, overrides: []}
    stage2: {recipe: stage2_tiny_cpu, overrides: []}
    contrastive: {overrides: ["model.overrides.text_tower={layers: 2}"]}
    mllm: {llm: tiny, image_size: 64, pretrain_recipe: pretrain_tiny_cpu, finetune_recipe: finetune_tiny_cpu,
           overrides: {pretrain: [], finetune: []}}
    eval: {suite: synth, limit: null, max_new_tokens: 16, resamples: 2000, probes: true, probe_per_class: [40, 20]}

Unknown keys (with a suggestion) and bad values are errors at load, through the run layer's strict loader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from eval.suites import SUITES
from eval.sweep import StageOverrides
from genlip.run.config import build, to_dict
from genlip.run.config import load_config as load_strict


@dataclass
class Stage1Entry:
    recipe: str = "stage1_tiny_cpu"
    overrides: list[str] = field(default_factory=list)


@dataclass
class Stage2Entry:
    recipe: str = "stage2_tiny_cpu"
    overrides: list[str] = field(default_factory=list)


@dataclass
class ContrastiveEntry:
    overrides: list[str] = field(default_factory=list)


@dataclass
class MllmEntry:
    llm: str = "tiny"  # a local LLM directory, or the generated tiny Qwen2
    image_size: int = 64
    pretrain_recipe: str = "pretrain_tiny_cpu"
    finetune_recipe: str = "finetune_tiny_cpu"
    overrides: StageOverrides = field(default_factory=StageOverrides)


@dataclass
class PipelineEval:
    suite: str = "synth"
    limit: int | None = None
    max_new_tokens: int = 16
    resamples: int = 2000  # bootstrap resamples for every interval
    probes: bool = True
    probe_per_class: list[int] = field(default_factory=lambda: [40, 20])  # train, val images per class

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise ValueError(f"eval.suite {self.suite!r} is not one of {sorted(SUITES)}")
        if len(self.probe_per_class) != 2 or min(self.probe_per_class) < 1:
            raise ValueError(f"eval.probe_per_class must be two positive counts, got {self.probe_per_class}")


@dataclass
class PipelineConfig:
    """The schema of a pipeline config: unknown keys and bad values are errors at load."""

    out: str = "runs/pipeline"
    seed: int = 0
    stage1: Stage1Entry = field(default_factory=Stage1Entry)
    stage2: Stage2Entry = field(default_factory=Stage2Entry)
    contrastive: ContrastiveEntry = field(default_factory=ContrastiveEntry)
    mllm: MllmEntry = field(default_factory=MllmEntry)
    eval: PipelineEval = field(default_factory=PipelineEval)


def load_config(path: str | Path | None) -> dict:
    """The config, validated (:class:`PipelineConfig`), as a plain dict with every default filled in."""
    return to_dict(load_strict(path, PipelineConfig) if path else build(PipelineConfig, {}))
