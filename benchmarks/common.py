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


def gpu_bf16_peak_tflops(n: int = 8192, reps: int = 10) -> float:
    """Best-of bf16 GEMM throughput of the current CUDA device now (TFLOP/s): the "share of peak" denominator."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        best = max(best, 2 * n**3 / (start.elapsed_time(end) / 1e3) / 1e12)
    return best


def add_allocator_arg(ap) -> None:
    ap.add_argument("--cpu-allocator", default="retain", choices=["retain", "system"],
                    help="glibc malloc setting for the whole process, as the trainers' train.cpu_allocator "
                         "(default: retain, what the trainers do)")


def apply_allocator(mode: str) -> str:
    from genlip.run.runtime import configure_cpu_allocator

    return configure_cpu_allocator(mode)


def interleaved_times(fns: dict, rounds: int, warmup: int = 2, after=None) -> tuple[dict, dict]:
    """Seconds per call of each function, measured round-robin (one call of each per round) so that a slow spell
    of the machine hits every contender alike. ``after()`` runs right after every timed call and its value is kept
    beside that call's time (e.g. the matmul peak at that moment). Returns ``(times, afters)`` keyed like ``fns``."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    afters: dict[str, list] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
            if after is not None:
                afters[k].append(after())
    return times, afters


def mfu_summary(gflops: float, times: list[float], peaks: list[float]) -> dict:
    """MFU three ways: ``mfu`` pairs each step with the peak measured right after it (the same moment of the
    machine) and takes the median; ``mfu_conservative`` is the median step against the best peak of the run;
    ``mfu_best`` the fastest step against the best peak."""
    per_step = [gflops / t / p for t, p in zip(times, peaks)]
    best_peak = max(peaks)
    return {"mfu": median(per_step), "mfu_conservative": gflops / median(times) / best_peak,
            "mfu_best": gflops / min(times) / best_peak, "peak_gflops_best": best_peak}


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


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
