"""Every GPU figure of BENCHMARKS.md in one command (one H100/H200), printed as JSON lines and written to
``--out/bench_gpu.json`` after each section:

    python benchmarks/bench_gpu.py --out results/gpu [--deadline 480] [--only stage1,variants,...]

Sections run in this order, the figures of BENCHMARKS.md's goals first, then what explains them, then figures measured
before; no section (nor variant, nor MLLM configuration) starts once ``--deadline`` seconds have passed, so a short
GPU allocation still returns the first ones. ``--only`` takes names or their starts up to a ``:`` (``stage2`` is every
``stage2:*``).

- ``env``: device, versions, the bf16 GEMM peak measured now (8192^3 products): the "share of peak" denominator;
- ``trainer``: ``genlip-pretrain`` on this device with the tiny recipes (a check, not a figure): stage 1, the same
  command again, stage 1 with bf16 parameters, stage 2 packed (FlexAttention) from the first;
- ``stage1:b64:prefix``: the stage-1 step at paper width (L16: 24 x 1024; 224 px = 196 patches + 64 text),
  compiled blocks, bf16 autocast, fused AdamW, chunked loss as in the paper recipes, the ``prefix`` attention that
  ``auto`` picks, batch 64. Each stage-1 step also reports ``dispatch_ms``, the host time until the step's work is
  queued, waits at the step's own host syncs included (the profiles count those syncs and their waits): close to
  ``sec_per_step`` means the step is bound by the host or by its syncs;
- ``stage2:L16:4x8192:issue_mix``: packed rows (FlexAttention, compiled blocks) of the first GPU measurement's mix (4
  x 8192, images of up to 1024 patches + ~80 text tokens, ``RowPacker``; comparable to its 98.6K tokens/s): tokens/s,
  share of peak, peak memory;
- ``stage1:b256:prefix``: the stage-1 step at batch 256 (where it does not fit, with full activation checkpointing,
  as the paper recipes run it);
- ``mllm``: one ``genlip-mllm finetune`` step of the paper's frozen protocol: GenLIP L16 at 384 px (576 image tokens),
  the 2-layer projector and a random LLM of Qwen2.5-1.5B's shape, bf16, 2048-token sequences, LLM + projector trained
  with the Trainer's fused AdamW and gradient clipping: eager with and without gradient checkpointing, then the LLM's
  layers compiled (``train.compile=true``) with the chunked loss (``train.loss_impl=chunked``), then compiled alone;
- ``eval``: greedy answers/s of that model at batch 1 and batch 16 (``mllm.chat.answer_batch``), and how many of
  the batched answers differ from batch 1's (bf16);
- ``variants``: the batch-64 stage-1 step with one change each, against ``stage1:b64:prefix``: the chunked loss's
  eager elementwise code instead of its two compiled kernels (``loss_eager``: what every figure before them ran), the
  blocks compiled for dynamic shapes (what genlip-pretrain does, stage-1 text lengths varying per batch; the other
  steps here are compiled for their fixed shapes), that step through genlip-pretrain's own step function
  (``trainer_step``: the batch copied from pinned host memory, the loss and the gradient norm read back every step for
  the non-finite check; against ``dynamic_shapes`` it is what the trainer adds to the bare step), the blocks compiled
  as one graph (``model.compile_scope=transformer``) with CUDA graphs (``reduce-overhead``) and without, bf16
  parameters with fp32 master weights (FSDP2 over a process group of one, what ``train.param_dtype=bf16`` runs on one
  GPU), no compilation, blocks compiled with CUDA graphs, and per-sample SDPA (``segments``);
- ``trainer:compiled``: ``genlip-pretrain`` again (a check): stage 2 with compiled blocks and full activation
  checkpointing, stage 1 with CUDA graphs (two micro-batches per step; inductor's reasons for leaving a graph out);
- ``profile:stage2`` and ``profile``: one stage-2 step (that mix) and one stage-1 batch-64 step under
  ``torch.profiler``: host vs device time, device time by kind of kernel (GEMM, attention, fused elementwise,
  optimizer, ...), launches and the top kernels;
- ``blockmask``: building one step's FlexAttention block mask on this device: ``create_block_mask`` against the
  project's construction from id ranges;
- ``prefix_check``: the stage-1 attention plan on this device against the dense mask (fp32 and bf16);
- ``stage1:b64:flex``: the batch-64 step with FlexAttention (what ``auto`` picked before ``prefix``);
- ``stage2:L16:4x8192`` (a long-caption mix, 200-1000 text tokens per sample) and the paper's 16384-token rows for
  L16 (activation checkpointing off and on) and So16 (on).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_stage2 import block_mask_figures, image_heavy_rows, packed_rows  # noqa: E402
from common import genlip_train_flops, gpu_bf16_peak_tflops  # noqa: E402

T0 = time.time()
DEV = "cuda"
IMAGE = 384  # the MLLM tower's resolution
SMOKE = False  # --smoke: every section at toy sizes on the CPU, to check this script without a GPU
PRESET = {"L16": "L16", "So16": "So16"}


def _llm_checkpointing(llm, on: bool) -> None:
    """Activation checkpointing of the LLM's layers on or off, by transformers' current name for it where it has one
    (the older ``gradient_checkpointing_*`` warn that they will be removed)."""
    verb = "enable" if on else "disable"
    fn = getattr(llm, f"activation_checkpointing_{verb}", None) or getattr(llm, f"gradient_checkpointing_{verb}")
    fn()


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def gemm_peak_tflops() -> float:
    return 1.0 if SMOKE else gpu_bf16_peak_tflops()


def cuda_time(fn, warmup: int = 3, iters: int = 5) -> float:
    """Median wall seconds per call, the device synchronised after each."""
    for _ in range(warmup):
        fn()
    sync()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


def dispatch_ms(fn, iters: int = 3) -> float:
    """Median host milliseconds until ``fn``'s work is queued (the device idle at the start of each call)."""
    ts = []
    for _ in range(iters):
        sync()
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
        sync()
    return 1e3 * sorted(ts)[len(ts) // 2]


def peak_gb() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else 0.0


def fresh() -> None:
    import gc

    gc.collect()
    if DEV == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def autocast():
    return torch.autocast("cuda", dtype=torch.bfloat16) if DEV == "cuda" else torch.autocast("cpu", enabled=False)


def stage1_model(preset: str, backend: str, checkpointing: bool = False, compile_mode: str | None = "default",
                 param_bf16: bool = False, scope: str = "blocks", dynamic: bool = False):
    """The model and optimizer of a step: blocks compiled by the trainer's ``compile_model`` with ``compile_mode``
    (``None``: eager), each on its own or as one graph (``scope="transformer"``, ``model.compile_scope``), for this
    batch's fixed shapes unless ``dynamic`` (as genlip-pretrain compiles them); ``param_bf16``:
    FSDP2 over a process group of one with bf16 compute weights and fp32 master shards (``train.param_dtype=bf16``
    on one GPU), the trainer's own ``genlip.run.dist`` calls."""
    from genlip.config import genlip_config
    from genlip.modeling import GenLIPForCaptioning
    from genlip.run import dist as D
    from genlip.train.loop import compile_model
    from genlip.train.optim import build_optimizer
    from genlip.train.recipe import OptimRecipe

    torch.manual_seed(0)
    cfg = genlip_config(PRESET[preset], attn_backend=backend)
    model = GenLIPForCaptioning(cfg).to(DEV).train()
    if checkpointing:
        model.vit.activation_checkpointing = "full"
    if compile_mode is not None and not SMOKE:
        compile_model(model, compile_mode, scope, dynamic)
    if param_bf16:
        D.init_single(torch.device(DEV))
        model = D.wrap(model, "fsdp", torch.device(DEV), "bf16")
    return cfg, model, build_optimizer(model, OptimRecipe(lr=1e-4))


def train_step(model, opt, cudagraphs: bool = False, **batch):
    def step():
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with autocast():
            loss = model(**batch, loss_impl="chunked").loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


S1_IMAGE, S1_TEXT = 224, 64


def trainer_train_step(model, opt, batch: dict, loss_impl: str = "chunked"):
    """``genlip-pretrain``'s own optimizer step (``genlip.train.loop.train_step``) on ``batch`` as its loader hands
    it over (CPU tensors, pinned on CUDA): the copy to the device, the supervised-token count, the loss and the
    gradient norm read back once per step for the non-finite check, the learning-rate schedule."""
    from types import SimpleNamespace

    from genlip.train.loop import train_step as loop_step
    from genlip.train.recipe import ModelRecipe, Recipe, TrainRecipe

    batch = {k: v.cpu().pin_memory() if DEV == "cuda" else v.cpu() for k, v in batch.items()}
    recipe = Recipe(model=ModelRecipe(preset=None, loss_impl=loss_impl), train=TrainRecipe(steps=10**6))
    run = SimpleNamespace(recipe=recipe, wrapped=model, optimizer=opt, device=torch.device(DEV),
                          autocast=autocast(), state={"nonfinite_skips": 0})
    count = [0]

    def step():
        count[0] += 1
        loop_step(run, [batch], count[0])
    return step


def stage1(peak: float, batch: int, backend: str, compile_mode: str | None = "default",
           param_bf16: bool = False, scope: str = "blocks", dynamic: bool = False, trainer_step: bool = False,
           checkpointing: bool = False) -> dict:
    """The stage-1 step at ``batch``; ``trainer_step``: through genlip-pretrain's own step function."""
    from genlip.run import dist as D

    text, image = S1_TEXT, S1_IMAGE
    fresh()
    cfg, model, opt = stage1_model("L16", backend, checkpointing, compile_mode=compile_mode, param_bf16=param_bf16,
                                   scope=scope, dynamic=dynamic)
    try:
        pix = torch.randn(batch, 3, image, image, device=DEV)
        ids = torch.randint(0, cfg.vocab_size, (batch, text), device=DEV)
        labels = ids.clone()
        labels[:, :7] = -100  # the prompt
        if trainer_step:
            step = trainer_train_step(model, opt, {"pixel_values": pix, "input_ids": ids, "labels": labels,
                                                   "attention_mask": torch.ones_like(ids)})
        else:
            step = train_step(model, opt, compile_mode == "reduce-overhead", input_ids=ids, pixel_values=pix,
                              labels=labels)
        t_compile = time.time()
        step()
        sync()
        t_compile = time.time() - t_compile
        sec = cuda_time(step)
        host = dispatch_ms(step)
    finally:
        if param_bf16:
            D.cleanup()
    n_img = (image // cfg.patch_size) ** 2
    tflop = genlip_train_flops(cfg, n_img, text, batch, int((labels != -100).sum())) / 1e12
    return {"preset": PRESET["L16"], "batch": batch, "backend": backend, "compile_mode": compile_mode,
            "compile_scope": scope, "dynamic_shapes": dynamic, "trainer_step": trainer_step,
            "activation_checkpointing": "full" if checkpointing else "none", "loss_kernels": loss_kernels(),
            "param_dtype": "bf16" if param_bf16 else "fp32", "sec_per_step": sec, "dispatch_ms": host,
            "samples_per_s": batch / sec, "tokens_per_s": batch * (n_img + text) / sec, "tflop_per_step": tflop,
            "tflops": tflop / sec, "share_of_peak": tflop / sec / peak, "peak_gb": peak_gb(),
            "first_step_s": t_compile}


def loss_kernels() -> str:
    import genlip.loss as L

    return "fused" if L.fuses(torch.device(DEV)) else "eager"


def stage1_large(peak: float, batch: int) -> dict:
    """The batch-256 step as the others (no activation checkpointing); where it does not fit the device (an 80 GB
    H100: it peaked at 76 GB on an H200), with full checkpointing as the paper recipes train it, the failure kept."""
    try:
        return stage1(peak, batch, "prefix")
    except RuntimeError as e:  # torch.OutOfMemoryError, or cuBLAS / Triton running out of memory
        if not isinstance(e, torch.OutOfMemoryError) and not any(
                m in str(e) for m in ("out of memory", "ALLOC_FAILED", "out of resource")):
            raise
        why = f"{type(e).__name__}: {str(e)[:200]}"
    fresh()
    return {**stage1(peak, batch, "prefix", checkpointing=True), "without_checkpointing": why}


def release_cudagraphs() -> None:
    """Drop compiled code and the CUDA-graph trees' memory pool (kept while dynamo's cache lives), so later
    sections get the memory back; what runs next compiles afresh."""
    if DEV != "cuda":
        return
    import torch._dynamo

    torch._dynamo.reset()
    try:
        from torch._inductor.cudagraph_trees import reset_cudagraph_trees

        reset_cudagraph_trees()
    except ImportError:
        pass
    fresh()


def eager_loss(fn):
    """``fn`` with the chunked loss's eager elementwise code (``genlip.loss.FUSED_CE``)."""
    import genlip.loss as L

    def run():
        before, L.FUSED_CE = L.FUSED_CE, False
        try:
            return fn()
        finally:
            L.FUSED_CE = before
    return run


def variants(peak: float, batch: int, base: dict | None, deadline: float, progress=lambda out: None) -> dict:
    """One change each against the ``prefix`` step measured in this process (``base``: ``stage1:b64:prefix``'s
    result when it ran, else measured here; each variant's ratio in ``vs_base``), the most promising first (the step
    is partly bound by the host at batch 64: one graph for all blocks, CUDA graphs). Each CUDA-graph variant
    releases its memory pool after it; no variant starts after ``deadline`` (seconds since the start);
    ``progress(out)`` after each one (a lease that ends mid-section keeps what finished)."""
    runs = {"base": lambda: dict(base) if base and "sec_per_step" in base else stage1(peak, batch, "prefix"),
            "loss_eager": eager_loss(lambda: stage1(peak, batch, "prefix")),
            "dynamic_shapes": lambda: stage1(peak, batch, "prefix", dynamic=True),
            "trainer_step": lambda: stage1(peak, batch, "prefix", dynamic=True, trainer_step=True),
            "reduce_overhead_transformer": lambda: stage1(peak, batch, "prefix", compile_mode="reduce-overhead",
                                                          scope="transformer"),
            "compile_transformer": lambda: stage1(peak, batch, "prefix", scope="transformer"),
            "param_bf16": lambda: stage1(peak, batch, "prefix", param_bf16=True),
            "eager": lambda: stage1(peak, batch, "prefix", compile_mode=None),
            "reduce_overhead": lambda: stage1(peak, batch, "prefix", compile_mode="reduce-overhead"),
            "segments": lambda: stage1(peak, batch, "segments")}
    out = {}
    for name, fn in runs.items():
        if time.time() - T0 > deadline:
            out[name] = {"skipped": "deadline"}
        else:
            try:
                out[name] = fn()
            except Exception as e:  # one variant that fails (e.g. CUDA graphs) still lets the others report
                out[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            if name.startswith("reduce_overhead"):
                try:
                    release_cudagraphs()
                except Exception as e:  # the variants measured so far still report
                    out[name]["release_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            if "sec_per_step" in out[name] and "sec_per_step" in out.get("base", {}):
                out[name]["vs_base"] = out["base"]["sec_per_step"] / out[name]["sec_per_step"]
        progress(out)
    return out


def prefix_check() -> dict:
    """The prefix plan on this device (flash kernels in bf16) against the dense mask in fp32: forward and grads."""
    from genlip.attention import build_plan
    from genlip.masks import fixed_layout

    B, n_txt = 8, 64
    mask = torch.ones(B, n_txt, dtype=torch.long)
    for b in range(B):
        mask[b, 20 + 5 * b:] = 0
    lay = fixed_layout(B, 14, 14, mask, n_txt).to(DEV)
    g = torch.Generator(device=DEV).manual_seed(0)
    qkv = [torch.randn(B, 16, 196 + n_txt, 64, device=DEV, generator=g) for _ in range(3)]
    out = {}
    for name, backend, dtype in (("dense_fp32", "dense", torch.float32), ("prefix_bf16", "prefix", torch.bfloat16),
                                 ("prefix_fp32", "prefix", torch.float32)):
        ts = [t.detach().clone().to(dtype).requires_grad_() for t in qkv]
        o = build_plan(lay, backend)(*ts)
        o.float().square().sum().backward()
        out[name] = (o.float(), [t.grad.float() for t in ts])
    ref_o, ref_g = out["dense_fp32"]
    res = {}
    for name in ("prefix_fp32", "prefix_bf16"):
        o, gs = out[name]
        res[name] = {"max_abs_out": float((o - ref_o).abs().max()),
                     "max_rel_grad": max(float((a - b).norm() / b.norm()) for a, b in zip(gs, ref_g))}
    return res


def packed_batch(cfg, rows: int, row_len: int, seed: int = 0):
    """The long-caption mix: rows filled with images of 16..1024 patches and 200..1000-token captions, first-fit."""
    from genlip.masks import packed_layout

    layout_rows = packed_rows(rows, row_len, seed, *(((1, 4), (5, 30)) if SMOKE else ()))
    lay = packed_layout(layout_rows, row_len).to(DEV)
    ids = torch.randint(0, cfg.vocab_size, (rows, row_len), device=DEV)
    labels = torch.where(lay.image_ids >= 0, -100, ids).masked_fill(lay.sample_ids < 0, -100)
    n_patches = int((lay.image_ids >= 0).sum())
    patches = torch.randn(n_patches, 3, cfg.patch_size, cfg.patch_size, device=DEV)
    n_samples = sum(len(r) for r in layout_rows)
    n_tokens = int((lay.sample_ids >= 0).sum())
    return {"input_ids": ids, "labels": labels, "pixel_values": patches, "layout": lay}, n_tokens, n_samples


def issue_mix_batch(cfg, rows: int, row_len: int):
    """The mix of the issue's stage-2 measurement (``gpu_check.py stage2``: 98.6K tokens/s at 4 x 8192): lengths of
    ``simulate_stage2_lengths(4000, seed=1)``, each an image of all but ~80 tokens (16..1024 patches) and the rest
    text with a 7-token prompt, packed by ``RowPacker(row_len, 256, 0.95)`` (``bench_stage2.image_heavy_rows``)."""
    from genlip.data.packing import collate_packed
    from genlip.masks import Layout

    small = {"cap": 60, "min_img": 4, "max_text": 10} if SMOKE else {"cap": 1024}
    packed = image_heavy_rows(rows, row_len, cfg.vocab_size, cfg.patch_size, **small)
    b = {k: v.to(DEV) if torch.is_tensor(v) else v for k, v in collate_packed(packed, row_len, 0).items()}
    lay = Layout(b.pop("sample_ids"), b.pop("image_ids"), b.pop("position_ids"))
    n_tokens = int((lay.sample_ids >= 0).sum())
    return {**b, "layout": lay}, n_tokens, sum(len(r) for r in packed)


def packed_flops(cfg, batch) -> float:
    """Matmul FLOPs (fwd + bwd) of a packed step: projections per real token, attention per attended pair."""
    from genlip.masks import segment_bounds

    d, f, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    lay = batch["layout"]
    tokens = int((lay.sample_ids >= 0).sum())
    proj = 2 * (5 * d * d + 3 * d * f)
    pairs = 0
    iids = lay.image_ids.cpu()
    for r, bounds in enumerate(segment_bounds(lay.sample_ids.cpu())):
        for s, e in bounds:
            n_img = int((iids[r, s:e] >= 0).sum())
            n_txt = e - s - n_img
            pairs += n_img * n_img + n_txt * n_img + n_txt * (n_txt + 1) // 2
    sup = int((batch["labels"] != -100).sum())
    fwd = L * (tokens * proj + 4 * d * pairs) + 2 * sup * cfg.text_embed_dim * cfg.vocab_size
    return 3 * fwd


def stage2(peak: float, preset: str, rows: int, row_len: int, checkpointing: bool, mix: str = "long") -> dict:
    fresh()
    cfg, model, opt = stage1_model(preset, "flex" if DEV == "cuda" else "segments", checkpointing)
    batch, n_tokens, n_samples = (issue_mix_batch if mix == "issue" else packed_batch)(cfg, rows, row_len)
    step = train_step(model, opt, **batch)
    try:
        sec = cuda_time(step, warmup=2, iters=4)
        host = dispatch_ms(step, 2)
    except torch.cuda.OutOfMemoryError:
        return {"preset": preset, "rows": rows, "row_len": row_len, "checkpointing": checkpointing, "oom": True,
                "peak_gb": peak_gb()}
    tflop = packed_flops(cfg, batch) / 1e12
    return {"preset": preset, "mix": mix, "rows": rows, "row_len": row_len, "checkpointing": checkpointing,
            "fill": n_tokens / (rows * row_len), "samples": n_samples, "sec_per_step": sec, "dispatch_ms": host,
            "tokens_per_s": n_tokens / sec, "tflop_per_step": tflop, "tflops": tflop / sec,
            "share_of_peak": tflop / sec / peak, "peak_gb": peak_gb(), "fits_80gb": peak_gb() < 79.0}


def trainer(tmp: Path, timeout: float = 150.0, compiled: bool = False, deadline: float = float("inf")) -> dict:
    """``genlip-pretrain`` itself on this device (its CUDA-only paths: pinned batches, bf16 autocast, bf16 parameters
    over a process group of one, FlexAttention block masks in packed training, checkpoints): the tiny stage-1 recipe,
    the same command again (must say ``already finished``), stage 1 with ``train.param_dtype=bf16``, stage 2 packed
    from the first run. ``compiled``: stage 2 with compiled blocks and full activation checkpointing (as the paper
    recipes can run it) and stage 1 with CUDA graphs (``model.compile_mode=reduce-overhead``, two micro-batches per
    step; with inductor's reasons for any graph it left out); stage 1 first if the other call has not run it. Each
    run: exit code, seconds, final loss, the output's end when it failed; none starts after ``deadline`` (seconds
    since the start), each is stopped after ``timeout`` seconds."""
    import re
    import subprocess

    env = {**os.environ, "GENLIP_HOME": str(tmp / "home")}
    s1, s2 = (4, 3) if SMOKE else (30, 20)
    first = ["stage1_tiny_cpu", f"train.steps={s1}", f"train.output_dir={tmp / 's1'}"]
    stage2 = ["stage2_tiny_cpu", f"train.steps={s2}", f"model.init_from={tmp / 's1'}"]
    on_gpu = [] if SMOKE else ["model.compile=true"]  # the CPU compiles too slowly for the smoke run: flags only
    if not compiled:
        runs = {"stage1": first, "stage1_again": first,
                "stage1_param_bf16": ["stage1_tiny_cpu", f"train.steps={s1}", f"train.output_dir={tmp / 's1b'}",
                                      "train.param_dtype=bf16"],
                "stage2": [*stage2, f"train.output_dir={tmp / 's2'}"]}
    else:
        runs = {} if (tmp / "s1" / "checkpoints").is_dir() else {"stage1": first}
        runs["stage2_compiled_checkpointed"] = [*stage2, f"train.output_dir={tmp / 's2c'}",
                                                "model.activation_checkpointing=full", *on_gpu]
        runs["stage1_cudagraphs"] = ["stage1_tiny_cpu", f"train.steps={s1}", f"train.output_dir={tmp / 's1g'}",
                                     "train.micro_batch=16", "model.compile_mode=reduce-overhead", *on_gpu]
    out = {}
    for name, (recipe, *overrides) in runs.items():
        if time.time() - T0 > deadline:
            out[name] = {"skipped": "deadline"}
            continue
        t = time.time()
        # inductor says why it leaves a graph out of CUDA graphs only on its cudagraphs log
        run_env = {**env, "TORCH_LOGS": "cudagraphs"} if name == "stage1_cudagraphs" else env
        try:  # a hang (e.g. in process-group set-up) must not eat the lease: each run gets ``timeout`` seconds
            p = subprocess.run([sys.executable, "-m", "genlip.train.cli", "--recipe", recipe, *overrides],
                               env=run_env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            text = "".join(x.decode(errors="replace") if isinstance(x, bytes) else x or ""
                           for x in (e.stdout, e.stderr))
            out[name] = {"rc": f"timeout after {timeout:g} s", "tail": text[-1500:]}
            continue
        text = p.stdout + p.stderr
        loss = re.search(r"final loss ([0-9.naninf]+)", text)
        out[name] = {"rc": p.returncode, "seconds": round(time.time() - t, 1),
                     "final_loss": float(loss.group(1)) if loss else None,
                     "already_finished": "already finished" in text}
        if name == "stage1_cudagraphs":
            out[name]["cudagraph_skips"] = [x.strip()[-200:] for x in text.splitlines() if "skipping cudagraphs" in x]
        if p.returncode:
            out[name]["tail"] = text[-1500:]
    return out


def blockmask() -> dict:
    """One step's FlexAttention block mask built on this device, both ways (``bench_stage2.block_mask_figures``)."""
    sizes = ((2, 256),) if SMOKE else ((4, 8192), (1, 16384))
    mix = ((1, 4), (5, 30)) if SMOKE else ()
    return {f"{r}x{n}": block_mask_figures(r, n, DEV, lambda fn: cuda_time(fn, 1, 3), mix) for r, n in sizes}


def mllm_parts(tmp: Path):
    """GenLIP L16 at 384 px + projector + a random LLM of Qwen2.5-1.5B's shape, built by the harness itself."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from genlip.config import genlip_config
    from genlip.data.tokenizer import train_tokenizer
    from genlip.modeling import GenLIPVisionModel
    from mllm.build import build_mllm

    torch.manual_seed(0)
    GenLIPVisionModel(genlip_config(PRESET["L16"], image_size=IMAGE)).save_pretrained(str(tmp / "tower"))
    texts = ["describe the image in detail", "what is written on the sign", "a photo of a red bus"] * 50
    tok = train_tokenizer(texts, tmp / "llm", vocab_size=400)
    shape = (dict(vocab_size=151_936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2) if not SMOKE else
             dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2))
    cfg = Qwen2Config(**shape, max_position_embeddings=32768,
                      rope_theta=1e6, tie_word_embeddings=True, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                      pad_token_id=tok.pad_token_id)
    with torch.device(DEV):
        Qwen2ForCausalLM(cfg).save_pretrained(str(tmp / "llm"))
    return build_mllm(str(tmp / "tower"), str(tmp / "llm"), "resize", image_size=IMAGE)


def mllm_flops(model, micro: int, seq: int, n_img: int, n_supervised: int) -> float:
    """Matmul FLOPs of one frozen-protocol step: the LLM forward and backward (3x forward: 2 per weight and token,
    causal attention pairs), its LM head on the ``n_supervised`` positions the loss needs (as ``genlip_train_flops``
    counts GenLIP's), the projector likewise, the frozen tower forward only."""
    c = model.config.text_config
    d, layers, T = c.hidden_size, c.num_hidden_layers, seq
    kv = c.num_key_value_heads * (d // c.num_attention_heads)
    per_token = layers * (2 * d * d + 2 * d * kv + 3 * d * c.intermediate_size)
    llm = micro * (2 * T * per_token + layers * 4 * d * T * (T + 1) // 2) + 2 * n_supervised * d * c.vocab_size
    v = model.config.vision_config
    tower = micro * (2 * n_img * v.num_hidden_layers * (5 * v.hidden_size**2 + 3 * v.hidden_size *
                     v.intermediate_size) + v.num_hidden_layers * 4 * v.hidden_size * n_img * n_img)
    proj = micro * 2 * n_img * (v.hidden_size * d + d * d)
    return 3 * (llm + proj) + tower


def mllm(peak: float, parts, deadline: float, micro: int = 4, seq: int = 2048, progress=lambda out: None) -> dict:
    """The step eager (with and without gradient checkpointing), then with the LLM's layers compiled
    (``train.compile``) and the chunked loss (``train.loss_impl=chunked``, the trainer's function), then compiled
    alone; no configuration starts after ``deadline`` (seconds since the start); ``progress(out)`` after each."""
    from mllm.train import chunked_lm_loss, compile_llm_layers

    fresh()
    model, tok, spec = parts
    model.to(DEV).train()
    n_img = (IMAGE // 16) ** 2  # resize mode: one square image, 576 tokens at 384 px
    image_id = model.config.image_token_id
    ids = torch.randint(10, 390, (micro, seq), device=DEV)
    ids[:, 5:5 + n_img] = image_id
    labels = ids.masked_fill(ids == image_id, -100)
    labels[:, : 5 + n_img + 20] = -100  # system prompt, image and question unsupervised
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "pixel_values": torch.randn(micro, 3, IMAGE, IMAGE, device=DEV)}
    n_sup = int((labels[:, 1:] != -100).sum())
    tower = set(model.model.vision_tower.parameters())
    for p in model.parameters():
        p.requires_grad_(p not in tower)  # the frozen protocol: projector + LLM
    trained = [p for p in model.parameters() if p.requires_grad]
    # fused, no weight decay, as MllmTrainer's with the recipes' defaults (one group here: the same kernel work)
    opt = torch.optim.AdamW(trained, lr=2e-5, weight_decay=0.0, fused=True)
    chunked_loss = chunked_lm_loss(model, bf16=DEV == "cuda")
    mode = {"chunked": False}

    def step():
        if mode["chunked"]:  # as the Trainer runs it: the model under autocast, the loss function after it
            with autocast():
                out = model(**batch, output_hidden_states=True, logits_to_keep=1)
            loss = chunked_loss(out, labels, n_sup)
        else:
            with autocast():
                loss = model(**batch, labels=labels, num_items_in_batch=n_sup).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)  # the Trainer's max_grad_norm (the recipes' 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    tflop = mllm_flops(model, micro, seq, n_img, n_sup) / 1e12
    with torch.no_grad():  # the two losses on this device and dtype
        with autocast():
            plain = float(model(**batch, labels=labels, num_items_in_batch=n_sup).loss)
            feats = model(**batch, output_hidden_states=True, logits_to_keep=1)
        mine = float(chunked_loss(feats, labels, n_sup))
        del feats
    out = {"llm": "Qwen2.5-1.5B shape (random)", "tower": "GenLIP L16 @384 (576 tokens)", "micro_batch": micro,
           "seq": seq, "supervised_tokens": n_sup, "tflop_per_step": tflop,
           "chunked_vs_plain_loss_rel_diff": abs(mine - plain) / abs(plain)}
    for key, compiled, gc, chunked in (("no_checkpointing", False, False, False), ("checkpointing", False, True, False),
                                       ("compiled_chunked_loss_checkpointing", True, True, True),
                                       ("compiled_chunked_loss_no_checkpointing", True, False, True),
                                       ("compiled_checkpointing", True, True, False),
                                       ("compiled_no_checkpointing", True, False, False)):
        if time.time() - T0 > deadline:
            out[key] = {"skipped": "deadline"}
            continue
        if compiled and not SMOKE and not getattr(model, "_bench_compiled", False):
            compile_llm_layers(model)
            model._bench_compiled = True
        mode["chunked"] = chunked
        fresh()
        _llm_checkpointing(model.model.language_model, gc)
        sec = cuda_time(step, warmup=2, iters=4)
        out[key] = {"sec_per_step": sec, "tokens_per_s": micro * seq / sec, "share_of_peak": tflop / sec / peak,
                    "peak_gb": peak_gb()}
        progress(out)
    _llm_checkpointing(model.model.language_model, False)
    for layer in model.model.language_model.layers:  # evaluation measures the eager layers, as before
        layer._compiled_call_impl = None
    return out


def evaluation(parts, n: int = 32, max_new: int = 16) -> dict:
    from PIL import Image

    from mllm.chat import answer_batch
    from mllm.processing import make_image_processor

    fresh()
    model, tok, spec = parts
    model.to(torch.bfloat16 if DEV == "cuda" else torch.float32).eval()
    ip = make_image_processor(spec)
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        arr = (torch.rand(300 + 7 * i, 400 - 5 * i, 3, generator=g) * 255).byte().numpy()
        items.append((Image.fromarray(arr), "describe the image in detail" + " please" * (i % 5)))
    res = {}
    answers = {}
    for bs in (1, 16):
        answer_batch(model, tok, spec, ip, items[:bs], max_new_tokens=max_new)  # warm-up
        sync()
        t = time.perf_counter()
        outs = []
        for s in range(0, n, bs):
            outs += answer_batch(model, tok, spec, ip, items[s:s + bs], max_new_tokens=max_new)
        sync()
        res[f"answers_per_s_batch{bs}"] = n / (time.perf_counter() - t)
        answers[bs] = outs
    res["speedup"] = res["answers_per_s_batch16"] / res["answers_per_s_batch1"]
    res["answers_differing_from_batch1"] = sum(a != b for a, b in zip(answers[1], answers[16]))
    res.update({"questions": n, "max_new_tokens": max_new, "dtype": "bf16"})
    return res


KERNEL_KINDS = (  # first match wins; names as CUDA reports them (cuBLAS nvjet/xmma/cutlass, flash, cuDNN, Triton)
    ("attention", ("flash", "fmha", "cudnn", "attention", "flex")),
    ("gemm", ("nvjet", "gemm", "xmma", "cutlass", "cublas", "sm90_", "sm80_")),
    ("optimizer", ("multi_tensor_apply", "adam")),
    ("fused_elementwise", ("triton",)),
    ("copy_or_cast", ("copy", "memcpy", "memset", "cast")),
    ("reduction", ("reduce",)),
    ("elementwise", ("elementwise", "vectorized")),
)


SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select")


def kernel_kind(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in low for k in keys)), "other")


def profiled(step) -> dict:
    """One call of ``step`` under the profiler: wall, host (operators' own CPU time) and device time (kernels only),
    device time by kind of kernel, and the 20 longest kernels."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    for _ in range(3):
        step()
    sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEV == "cuda" else [])
    with prof(activities=acts) as p:
        t = time.perf_counter()
        step()
        sync()
        wall = time.perf_counter() - t
    events = p.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]  # not their operators too
    cuda_total = max(sum(e.self_device_time_total for e in kernels) / 1e3, 1e-9)
    cpu_total = sum(e.self_cpu_time_total for e in events if e.device_type == torch.autograd.DeviceType.CPU) / 1e3
    kinds: dict[str, float] = {}
    for e in kernels:
        kinds[kernel_kind(e.key)] = kinds.get(kernel_kind(e.key), 0.0) + e.self_device_time_total / 1e3
    top = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:20]
    # where the host waits for the device: the operators that read a device value back (a scalar, a data-dependent
    # shape), with the host time inside them, children included, and the runtime's copies and synchronize calls
    # (the last synchronize is this function's own)
    syncs = {e.key: {"calls": e.count, "host_ms": round(e.cpu_time_total / 1e3, 2)} for e in events
             if e.key in SYNC_OPS or "Synchronize" in e.key or e.key.startswith("cudaMemcpy")}
    return {"wall_ms": wall * 1e3, "device_ms": cuda_total, "host_ms": cpu_total, "host_syncs": syncs,
            "launches": sum(e.count for e in kernels),
            "device_ms_by_kind": {k: round(v, 2) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "top_kernels": [{"name": e.key[:90], "kind": kernel_kind(e.key),
                             "device_ms": e.self_device_time_total / 1e3,
                             "share": e.self_device_time_total / 1e3 / cuda_total, "calls": e.count} for e in top]}


def profile(batch: int = 64) -> dict:
    fresh()
    cfg, model, opt = stage1_model("L16", "prefix")
    pix = torch.randn(batch, 3, S1_IMAGE, S1_IMAGE, device=DEV)
    ids = torch.randint(0, cfg.vocab_size, (batch, S1_TEXT), device=DEV)
    return {"batch": batch, **profiled(train_step(model, opt, input_ids=ids, pixel_values=pix, labels=ids))}


def profile_stage2(rows: int, row_len: int) -> dict:
    fresh()
    cfg, model, opt = stage1_model("L16", "flex" if DEV == "cuda" else "segments")
    batch, n_tokens, n_samples = issue_mix_batch(cfg, rows, row_len)
    return {"rows": rows, "row_len": row_len, "mix": "issue", **profiled(train_step(model, opt, **batch))}


def smoke_mode() -> None:
    """Toy sizes on the CPU (``--smoke``), with the chunked loss's compiled kernels that CUDA runs."""
    import genlip.loss as L

    global DEV, SMOKE, IMAGE, S1_IMAGE, S1_TEXT
    DEV, SMOKE, IMAGE, S1_IMAGE, S1_TEXT = "cpu", True, 32, 32, 16
    PRESET.update({"L16": "tiny", "So16": "tiny"})
    L.FUSED_CE = True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/gpu", help="directory for bench_gpu.json (default: %(default)s, "
                    "relative to the current directory)")
    ap.add_argument("--deadline", type=float, default=420.0, help="seconds after which no new section starts")
    ap.add_argument("--only", default="", help="comma-separated sections to run, each a name or the start of names "
                    "up to a ':' (stage2 runs every stage2:* section; default: all)")
    ap.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: checks the script, measures nothing")
    args = ap.parse_args()
    if args.smoke:
        smoke_mode()
    elif not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device (--smoke checks it on the CPU)")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    import torch._dynamo as dynamo

    # every section builds a new model of other shapes; the blocks' shared code must not hit the recompile limit
    dynamo.config.recompile_limit = 256
    dynamo.config.accumulated_recompile_limit = 4096
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    only = set(filter(None, args.only.split(",")))

    def record(name, fn):
        if only and not any(name == o or name.startswith(o + ":") for o in only):
            return
        if time.time() - T0 > args.deadline:
            results[name] = {"skipped": "deadline"}
        else:
            t = time.time()
            try:
                results[name] = fn()
            except Exception as e:  # a section that fails still lets the others report
                results[name] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
            results[name]["section_s"] = round(time.time() - t, 1)
        print(json.dumps({name: results[name]}), flush=True)
        save()

    def save():
        (out / "bench_gpu.json").write_text(json.dumps(results, indent=1))

    def partial(name):  # a long section's finished parts, written as they come (the section's result replaces it)
        def update(part):
            results[name] = {**part, "partial": True}
            save()
        return update

    import transformers

    peak = gemm_peak_tflops()
    record("env", lambda: {"device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu (smoke)",
                           "torch": torch.__version__,
                           "transformers": transformers.__version__, "bf16_gemm_peak_tflops": peak,
                           "date": time.strftime("%Y-%m-%d")})
    import tempfile

    b = 2 if SMOKE else 64
    r = 256 if SMOKE else 8192
    # the figures of the goals first (a short lease still measures them), then what explains them, then the rest
    runs_dir = tempfile.TemporaryDirectory()  # both trainer sections' runs (the compiled one continues stage 1)
    record("trainer", lambda: trainer(Path(runs_dir.name), deadline=args.deadline))
    record("stage1:b64:prefix", lambda: stage1(peak, b, "prefix"))
    record("stage2:L16:4x8192:issue_mix", lambda: stage2(peak, "L16", 4, r, False, "issue"))
    record("stage1:b256:prefix", lambda: stage1_large(peak, 4 * b))
    with tempfile.TemporaryDirectory() as tmp:
        parts = {}

        def build():
            parts["m"] = mllm_parts(Path(tmp))
            return mllm(peak, parts["m"], args.deadline, *((2, 64) if SMOKE else ()), progress=partial("mllm"))

        record("mllm", build)
        if "m" in parts:
            record("eval", lambda: evaluation(parts["m"], *((4, 4) if SMOKE else ())))
        parts.clear()
    record("variants", lambda: variants(peak, b, results.get("stage1:b64:prefix"), args.deadline,
                                        partial("variants")))
    record("trainer:compiled", lambda: trainer(Path(runs_dir.name), compiled=True, deadline=args.deadline))
    runs_dir.cleanup()
    record("profile:stage2", lambda: profile_stage2(4, r))
    record("profile", lambda: profile(b))
    record("blockmask", blockmask)
    record("prefix_check", prefix_check)
    record("stage1:b64:flex", lambda: stage1(peak, b, "flex" if DEV == "cuda" else "dense"))
    record("stage2:L16:4x8192", lambda: stage2(peak, "L16", 4, r, False))
    record("stage2:L16:1x16384:ac_none", lambda: stage2(peak, "L16", 1, 2 * r, False))
    record("stage2:L16:1x16384:ac_full", lambda: stage2(peak, "L16", 1, 2 * r, True))
    record("stage2:So16:1x16384:ac_full", lambda: stage2(peak, "So16", 1, 2 * r, True))


if __name__ == "__main__":
    main()
