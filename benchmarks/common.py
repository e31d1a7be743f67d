"""Shared helpers for the benchmark scripts: the fp32 matmul peak, timing, and GenLIP FLOP counts."""

from __future__ import annotations

import time

import torch


def matmul_peak_gflops(n: int = 2048, reps: int = 8) -> float:
    """Best-of fp32 GEMM throughput on this machine now (GFLOP/s); measure it in the same run as what you compare."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def timeit(fn, warmup: int = 3, iters: int = 10) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def genlip_train_flops(cfg, n_img: int, n_text: int, batch: int, n_supervised: int) -> float:
    """Matmul FLOPs of one training step (forward + backward = 3x forward) of the fixed stage-1 format.

    Per token and layer: ``2 * (5 d^2 + 3 d f)`` for the projections (q_proj is ``d -> 2d``), ``4 d`` per attended
    key for scores and values (prefix-LM pairs counted exactly); plus the patch embedding on image tokens and the
    LM head on supervised tokens only (that is all our loss computes).
    """
    d, f, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    q_mult = 2 if cfg.gated_attention else 1
    proj = 2 * ((3 + q_mult) * d * d + 3 * d * f)
    pairs = n_img * n_img + n_text * n_img + n_text * (n_text + 1) // 2
    per_sample = L * ((n_img + n_text) * proj + 4 * d * pairs)
    per_sample += 2 * n_img * cfg.num_channels * cfg.patch_size**2 * d
    fwd = batch * per_sample + 2 * n_supervised * cfg.text_embed_dim * cfg.vocab_size
    return 3 * fwd
