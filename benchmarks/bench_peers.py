"""Our GenLIP training step against the systems users would otherwise pick, measured in one run on this machine.

    python benchmarks/bench_peers.py [--config mid] [--batch 8] [--steps 6]        # CPU, fp32
    python benchmarks/bench_peers.py --gpu --config L16 --batch 64                   # CUDA: bf16, compiled blocks

Contenders at the same encoder width/depth, image size and caption length, each with its own optimizer step:

- ``genlip``: this toolkit's model and the trainer's optimizer (fused AdamW when available);
- ``plain``: ``benchmarks/plain_genlip.py``, the same architecture written plainly (dense mask, full logits,
  ``torch.optim.AdamW`` defaults); its loss is checked against ours on shared weights first;
- ``coca``: open_clip's CoCa (ViT of the same width/depth, attentional pooler; unimodal text + multimodal decoder
  of half the depth each, so a text token passes the same number of layers as in GenLIP: CoCa-Large's proportions),
  contrastive + caption loss;
- ``coca_base``: the same with unimodal and multimodal decoders each as deep as the ViT (CoCa-Base's proportions,
  open_clip's ``coca_ViT-B-32``);
- ``siglip``: open_clip's two-tower model of the same vision width/depth and an equally deep text tower, sigmoid
  loss.

Steps are timed round-robin (one step of every contender per round, the fp32 peak re-measured after each round), so
a slow spell of the machine hits all contenders alike; each figure is the median over rounds, in samples/s. The whole
process runs with one ``--cpu-allocator`` setting (default ``retain``, what the trainers do), so every contender
gets the same allocator. MFU is our FLOP count of the GenLIP step (``common.genlip_train_flops``) over time,
against the fp32 GEMM peak measured in the same run (the peers' MFU uses their own matmul FLOPs, counted by
``torch.utils.flop_counter`` on one step). Prints JSON and Markdown rows for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import (  # noqa: E402
    add_allocator_arg,
    apply_allocator,
    genlip_train_flops,
    gpu_bf16_peak_tflops,
    interleaved_times,
    matmul_peak_gflops,
    median,
    mfu_summary,
)
from plain_genlip import PlainGenLIP  # noqa: E402

from genlip.config import genlip_config  # noqa: E402
from genlip.modeling import GenLIPForCaptioning  # noqa: E402

# bf16 dense peaks (TFLOP/s) of common accelerators, for the GPU mode's MFU
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
                    "A10": 125.0, "L4": 121.0, "4090": 165.0, "B200": 2250.0, "GH200": 989.0}


CHECK: dict = {}  # the plain-vs-ours equality check, reported with the results


def counted_flops(step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        step()
    return float(fc.get_total_flops())


def copy_into_plain(ours: GenLIPForCaptioning, plain: PlainGenLIP) -> None:
    sd = {"patch.weight": ours.vit.patch_embed.proj.weight, "patch.bias": ours.vit.patch_embed.proj.bias,
          "embed.weight": ours.embed_tokens.weight, "norm.weight": ours.vit.norm.weight,
          "norm.bias": ours.vit.norm.bias, "head.weight": ours.lm_head.weight}
    names = {"n1": "norm1", "n2": "norm2", "q": "attn.q_proj", "k": "attn.k_proj", "v": "attn.v_proj",
             "o": "attn.out_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
    for i, blk in enumerate(ours.vit.blocks):
        for short, long in names.items():
            mod = blk.get_submodule(long)
            sd[f"blocks.{i}.{short}.weight"], sd[f"blocks.{i}.{short}.bias"] = mod.weight, mod.bias
        sd[f"blocks.{i}.g1"], sd[f"blocks.{i}.g2"] = blk.ls1.gamma, blk.ls2.gamma
    plain.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=True)


def genlip_steps(cfg, batch, n_text, image, device, dtype_ctx, compile_blocks=False):
    from genlip.train.loop import compile_model
    from genlip.train.optim import build_optimizer
    from genlip.train.recipe import OptimRecipe

    torch.manual_seed(0)
    ours = GenLIPForCaptioning(cfg).to(device).train()
    plain = PlainGenLIP(cfg).to(device).train()
    copy_into_plain(ours, plain)
    pix = torch.randn(batch, 3, image, image, device=device)
    ids = torch.randint(0, cfg.vocab_size, (batch, n_text), device=device)
    labels = ids.clone()
    labels[:, :7] = -100
    # the plain model is the same function: checked on shared weights in full fp32 (TF32 convolutions and matmuls
    # off, as they round differently in the two models' layouts)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    n = min(batch, 4)  # a few samples are enough to check the function
    with torch.no_grad():
        a, b = ours(ids[:n], pix[:n], labels=labels[:n]).loss, plain(pix[:n], ids[:n], labels[:n])
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32[:2]
    torch.set_float32_matmul_precision(tf32[2])
    rel = abs(float(a) - float(b)) / max(1.0, abs(float(a)))
    # CPU: 1e-4. CUDA: the two models' kernels (two SDPA calls vs one masked call, a gathered vs a full LM head)
    # round differently in fp32 even without TF32; measured 9e-4 at L16 on an H200, so 2e-3 there
    if rel > (2e-3 if device.type == "cuda" else 1e-4):
        raise AssertionError(f"plain GenLIP disagrees with ours: {float(b)} vs {float(a)}")
    CHECK["loss_rel_diff"] = rel
    if compile_blocks:
        import torch._dynamo as dynamo

        dynamo.config.recompile_limit = 64  # 24 blocks share one code object
        compile_model(ours, dynamic=False)
    opt_ours = build_optimizer(ours, OptimRecipe(lr=1e-4))
    opt_plain = torch.optim.AdamW(plain.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01)

    def step_ours():
        with dtype_ctx():
            loss = ours(ids, pix, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def step_plain():
        with dtype_ctx():
            loss = plain(pix, ids, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
        opt_plain.step()
        opt_plain.zero_grad(set_to_none=True)

    n_img = (image // cfg.patch_size) ** 2
    flops = genlip_train_flops(cfg, n_img, n_text, batch, int((labels != -100).sum()))
    return step_ours, step_plain, flops


def open_clip_steps(cfg, batch, n_text, image, device, dtype_ctx):
    import open_clip
    from open_clip.loss import CoCaLoss, SigLipLoss

    d, L, H = cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads
    mlp_ratio = 3 * cfg.intermediate_size / (2 * d)  # SwiGLU 3*d*f params = a GELU MLP of ratio 3f/2d
    vision = {"image_size": image, "layers": L, "width": d, "head_width": d // H, "patch_size": cfg.patch_size,
              "mlp_ratio": mlp_ratio}
    text = {"context_length": n_text, "vocab_size": cfg.vocab_size, "width": d, "heads": H, "mlp_ratio": mlp_ratio}

    def coca_model(text_layers: int):
        torch.manual_seed(0)
        return open_clip.CoCa(embed_dim=d,
                              vision_cfg={**vision, "attentional_pool": True, "attn_pooler_heads": H,
                                          "output_tokens": True},
                              text_cfg={**text, "layers": text_layers, "embed_cls": True, "output_tokens": True},
                              multimodal_cfg={"context_length": n_text, "vocab_size": cfg.vocab_size, "width": d,
                                              "heads": H, "layers": text_layers, "mlp_ratio": mlp_ratio},
                              ).to(device).train()

    siglip = open_clip.CustomTextCLIP(embed_dim=d, vision_cfg={**vision, "pool_type": "avg"},
                                      text_cfg={**text, "layers": L, "pool_type": "last"},
                                      init_logit_bias=-10.0, output_dict=True).to(device).train()
    pix = torch.randn(batch, 3, image, image, device=device)
    txt = torch.randint(1, cfg.vocab_size, (batch, n_text), device=device)
    coca_loss, sig_loss = CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0), SigLipLoss()
    opt_s = torch.optim.AdamW(siglip.parameters(), lr=1e-4)

    def coca_step(text_layers: int):
        coca = coca_model(text_layers)
        opt_c = torch.optim.AdamW(coca.parameters(), lr=1e-4)

        def step():
            with dtype_ctx():
                out = coca(pix, txt)
                losses = coca_loss(out["image_features"], out["text_features"], out["logits"], out["labels"],
                                   out["logit_scale"])
            sum(losses).backward()
            torch.nn.utils.clip_grad_norm_(coca.parameters(), 1.0)
            opt_c.step()
            opt_c.zero_grad(set_to_none=True)

        return step

    def step_siglip():
        with dtype_ctx():
            out = siglip(pix, txt)
            loss = sig_loss(out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(siglip.parameters(), 1.0)
        opt_s.step()
        opt_s.zero_grad(set_to_none=True)

    return coca_step, step_siglip


def device_peak_gflops(device) -> tuple[float, str]:
    """The CPU's fp32 or the GPU's bf16 GEMM peak, measured in this run (8192^3 products on the GPU)."""
    if device.type != "cuda":
        return matmul_peak_gflops(), "fp32 GEMM measured in this run"
    name = torch.cuda.get_device_name(device)
    best = gpu_bf16_peak_tflops() * 1e3
    spec = next((tf for key, tf in BF16_PEAK_TFLOPS.items() if key in name), None)
    return best, f"{name} bf16 GEMM measured in this run" + (f" (spec {spec:.0f} TFLOP/s)" if spec else "")


def main() -> None:
    import contextlib

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="mid")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--text", type=int, default=64)
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--steps", type=int, default=6, help="timed rounds (one step of every contender per round)")
    ap.add_argument("--gpu", action="store_true", help="CUDA: bf16 autocast, torch.compile")
    ap.add_argument("--attn", default="auto", help="our attention backend (auto: prefix for these rows)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["plain", "coca", "coca_base", "siglip"])
    ap.add_argument("--compile", action="store_true", help="torch.compile our blocks on the CPU too (the GPU mode "
                    "always compiles)")
    add_allocator_arg(ap)
    args = ap.parse_args()
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device; this machine has none (run without --gpu for the CPU figures)")
    device = torch.device("cuda" if args.gpu else "cpu")
    allocator = apply_allocator(args.cpu_allocator) if device.type == "cpu" else "cuda caching"
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = genlip_config(args.config, attn_backend=args.attn)
    if args.gpu:
        def dtype_ctx():
            return torch.autocast("cuda", dtype=torch.bfloat16)

        def sync():
            torch.cuda.synchronize()
    else:
        dtype_ctx, sync = contextlib.nullcontext, (lambda: None)
    peak, peak_src = device_peak_gflops(device)
    step_ours, step_plain, flops = genlip_steps(cfg, args.batch, args.text, args.image, device, dtype_ctx,
                                                compile_blocks=args.gpu or args.compile)
    runs = {"genlip": step_ours}
    if "plain" not in args.skip:
        runs["plain"] = step_plain
    if not {"coca", "coca_base", "siglip"} <= set(args.skip):
        coca_step, step_siglip = open_clip_steps(cfg, args.batch, args.text, args.image, device, dtype_ctx)
        L = cfg.num_hidden_layers
        if "coca" not in args.skip:  # a caption token passes L layers, as in GenLIP (CoCa-Large proportions)
            runs["coca"] = coca_step(L // 2)
        if "coca_base" not in args.skip:  # L unimodal + L multimodal layers (CoCa-Base proportions)
            runs["coca_base"] = coca_step(L)
        if "siglip" not in args.skip:
            runs["siglip"] = step_siglip
    step_flops = {name: flops if name in ("genlip", "plain") else counted_flops(fn) for name, fn in runs.items()}

    def synced(fn):
        def call():
            fn()
            sync()
        return call

    def peak_now():  # the fp32 peak right after each step, so every step has a peak of the same moment
        return matmul_peak_gflops(reps=3) if device.type == "cpu" else peak

    times, peaks = interleaved_times({k: synced(fn) for k, fn in runs.items()}, rounds=args.steps,
                                     warmup=3 if args.gpu or args.compile else 2, after=peak_now)
    res = {}
    for name, ts in times.items():
        sec = median(ts)
        f = step_flops[name] / 1e9
        res[name] = {"sec_per_step": sec, "samples_per_s": args.batch / sec, "gflops_per_step": f,
                     **mfu_summary(f, ts, peaks[name]), "step_times": [round(t, 4) for t in ts],
                     "peaks": [round(p) for p in peaks[name]]}
    n_img = (args.image // cfg.patch_size) ** 2
    tok = args.batch * (n_img + args.text)
    ratios = {f"genlip_vs_{k}": res["genlip"]["samples_per_s"] / res[k]["samples_per_s"] for k in res if k != "genlip"}
    # per-round ratios: each round's steps ran back to back, so their ratio is the least disturbed figure
    round_ratios = {f"genlip_vs_{k}": sorted(b / a for a, b in zip(times["genlip"], times[k]))
                    for k in times if k != "genlip"}
    out = {"config": args.config, "device": str(device), "compiled": bool(args.gpu or args.compile),
           "cpu_allocator": allocator, "batch": args.batch, "image": args.image,
           "text": args.text, "peak_source": peak_src,
           "results": res, "ratios": ratios, "per_round_ratios": round_ratios, "plain_check": CHECK,
           "genlip_tokens_per_s": tok / res["genlip"]["sec_per_step"]}
    print(json.dumps(out))
    for k, r in res.items():
        rr = round_ratios.get(f"genlip_vs_{k}")
        spread = f" (rounds {rr[0]:.2f}-{rr[-1]:.2f})" if rr else ""
        print(f"| {k} | {r['samples_per_s']:.2f} | {r['gflops_per_step']:.0f} | {r['mfu']:.0%} "
              f"({r['mfu_conservative']:.0%}) | "
              f"{res['genlip']['samples_per_s'] / r['samples_per_s']:.2f}x{spread} |")


if __name__ == "__main__":
    main()
