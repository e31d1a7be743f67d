"""``genlip-caption``: the encoder describes images by itself, batched, with a KV cache.

    genlip-caption --model runs/stage2_tiny_cpu IMAGES... [--out captions.jsonl]
    genlip-caption --model DIR photos/ shards/val-000.tar --size 224 --max-new-tokens 64
    genlip-caption --model DIR img.png --sample --temperature 0.7 --top-p 0.9 --seed 0

Inputs are image files, folders (recursive) and WebDataset ``.tar`` shards. Images run at their native aspect ratio
(stage 2's smart resize) unless ``--size`` fixes a square size. One JSON line per image:
``{"image", "caption", "width", "height", "grid", "num_tokens"}``. Unreadable images are skipped and counted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from genlip.data.decode import SkipStats
from genlip.generation import DEFAULT_PROMPT
from genlip.run.parser import Parser
from genlip.tools.common import image_input, iter_images, load_captioner, pick_device


def caption_images(model, tokenizer, named_images, size: int | None = None, batch_size: int = 8,
                   prompt: str | None = None, max_new_tokens: int = 256, do_sample: bool = False,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                   min_pixels: int = 4096, max_pixels: int = 262144):
    """Yield one record per ``(name, PIL image)``; images of different sizes share a batch (left-padded)."""
    prompt_ids = tokenizer(DEFAULT_PROMPT if prompt is None else prompt, add_special_tokens=False).input_ids
    gen = torch.Generator(device=model.lm_head.weight.device).manual_seed(seed) if seed is not None else None
    cfg = model.config
    eos = cfg.eos_token_id if cfg.eos_token_id is not None else tokenizer.eos_token_id
    batch: list = []

    def flush():
        pix = [image_input(img, cfg, size, min_pixels, max_pixels) for _, img in batch]
        outs = model.caption(pix, prompt_ids, max_new_tokens=max_new_tokens, eos_token_id=eos, do_sample=do_sample,
                             temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)
        for (name, img), x, ids in zip(batch, pix, outs):
            P = cfg.patch_size
            yield {"image": name, "caption": tokenizer.decode(ids, skip_special_tokens=True).strip(),
                   "width": img.width, "height": img.height, "grid": [x.shape[1] // P, x.shape[2] // P],
                   "num_tokens": len(ids)}

    for item in named_images:
        batch.append(item)
        if len(batch) == batch_size:
            yield from flush()
            batch = []
    if batch:
        yield from flush()


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="genlip-caption", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="GenLIP checkpoint or run directory (newest checkpoint)")
    ap.add_argument("images", nargs="+", help="image files, folders, .tar shards")
    ap.add_argument("--out", default="-", help="JSONL file ('-' = stdout)")
    ap.add_argument("--size", type=int, default=None, help="square input size (default: native aspect ratio)")
    ap.add_argument("--max-pixels", type=int, default=262144, help="native mode: at most this many pixels")
    ap.add_argument("--min-pixels", type=int, default=4096, help="native mode: at least this many pixels")
    ap.add_argument("--batch-size", type=int, default=8, help="images per forward (default: %(default)s)")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="caption length limit (default: %(default)s)")
    ap.add_argument("--prompt", default=None, help="default: the pretraining prompt")
    ap.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    ap.add_argument("--temperature", type=float, default=None, help="with --sample (default: 1.0)")
    ap.add_argument("--top-k", type=int, default=None, help="with --sample: keep the k likeliest (default 0: all)")
    ap.add_argument("--top-p", type=float, default=None, help="with --sample: nucleus mass (default 1: all)")
    ap.add_argument("--seed", type=int, default=None, help="with --sample: a seed for repeatable captions")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... or auto (CUDA when available)")
    args = ap.parse_args(argv)
    hf_logging.disable_progress_bar()  # transformers' loading / saving bars: noise between our lines
    if args.batch_size < 1 or args.max_new_tokens < 1:
        ap.error("--batch-size and --max-new-tokens must be positive")
    given = [f"--{k.replace('_', '-')}" for k in ("temperature", "top_k", "top_p", "seed")
             if getattr(args, k) is not None]
    if given and not args.sample:
        ap.error(f"{', '.join(given)} only appl{'y' if len(given) > 1 else 'ies'} with --sample (the default is "
                 "greedy decoding)")
    args.temperature = 1.0 if args.temperature is None else args.temperature
    args.top_k, args.top_p = args.top_k or 0, 1.0 if args.top_p is None else args.top_p
    if args.temperature <= 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        ap.error(f"--temperature must be above 0, --top-p in (0, 1] and --top-k at least 0; got {args.temperature}, "
                 f"{args.top_p}, {args.top_k}")
    device = pick_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:  # what the user gave that cannot be used: one line, exit code 2 (as every command's input mistakes)
        model, tok, src = load_captioner(args.model, device, dtype)
    except (FileNotFoundError, OSError) as e:
        print(f"genlip-caption: {e}", file=sys.stderr)
        return 2
    P = model.config.patch_size
    if args.size is not None and (args.size < P or args.size % P):
        print(f"genlip-caption: --size {args.size} is not a positive multiple of the model's patch size {P}",
              file=sys.stderr)
        return 2
    stats = SkipStats()
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out = sys.stdout if args.out == "-" else open(Path(args.out), "w")  # noqa: SIM115 (closed below)
    n, t0 = 0, time.perf_counter()
    try:
        for rec in caption_images(model, tok, iter_images(args.images, stats), args.size, args.batch_size,
                                  args.prompt, args.max_new_tokens, args.sample, args.temperature, args.top_k,
                                  args.top_p, args.seed, args.min_pixels, args.max_pixels):
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            out.flush()
            n += 1
    except FileNotFoundError as e:
        print(f"genlip-caption: {e}", file=sys.stderr)
        return 2
    finally:
        if out is not sys.stdout:
            out.close()
    dt = time.perf_counter() - t0
    skipped = ", ".join(f"{k}: {v}" for k, v in sorted(stats.skipped.items())) or "none"
    print(f"genlip-caption: {n} images captioned with {src} in {dt:.1f} s; skipped: {skipped}", file=sys.stderr)
    return 0 if n else 1


if __name__ == "__main__":
    sys.exit(main())
