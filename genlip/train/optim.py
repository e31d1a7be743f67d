"""Optimiser and learning-rate schedule: AdamW, linear warmup from 0, cosine decay to ``min_lr``."""

from __future__ import annotations

import math

import torch
from torch import nn

from genlip.train.recipe import OptimRecipe


def lr_at(step: int, total: int, peak: float, min_lr: float, warmup_ratio: float) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total``.

    >>> [round(lr_at(s, 10, 1.0, 0.0, 0.2), 3) for s in (0, 1, 2, 6, 9)]
    [0.5, 1.0, 1.0, 0.5, 0.038]
    """
    warmup = max(1, round(total * warmup_ratio)) if warmup_ratio > 0 else 0
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def param_groups(model: nn.Module, cfg: OptimRecipe) -> list[dict]:
    """All parameters decay (as the release does), or norms, biases and LayerScale excluded when asked."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not cfg.no_decay_norm_bias:
        return [{"params": [p for _, p in params], "weight_decay": cfg.weight_decay}]
    no_decay = [p for n, p in params if p.ndim < 2 or n.endswith(".gamma")]
    decay = [p for n, p in params if not (p.ndim < 2 or n.endswith(".gamma"))]
    return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimRecipe) -> torch.optim.Optimizer:
    """AdamW with the fused kernel (one pass over each tensor; ~8x faster than the default on the CPU)."""
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=True)
