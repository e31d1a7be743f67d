"""Stage-1 training throughput on this machine: samples/s, tokens/s, MFU against the fp32 matmul peak measured in
the same run, and the data loader's throughput with one worker.

    python benchmarks/bench_pretrain.py [--config mid] [--batch 8] [--steps 10]

Config ``mid``: width 512, depth 8, 8 heads, SwiGLU, patch 16 at 224 px (196 image tokens) + 64 caption tokens,
batch 8, fp32, AdamW step included. Prints a JSON line and a Markdown row for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import (  # noqa: E402
    add_allocator_arg,
    apply_allocator,
    genlip_train_flops,
    interleaved_times,
    matmul_peak_gflops,
    median,
    mfu_summary,
)

from genlip.config import genlip_config  # noqa: E402
from genlip.modeling import GenLIPForCaptioning  # noqa: E402


def train_step_bench(cfg, batch: int, n_text: int, image: int, steps: int, loss_impl: str) -> dict:
    torch.manual_seed(0)
    model = GenLIPForCaptioning(cfg).train()
    from genlip.train.optim import build_optimizer
    from genlip.train.recipe import OptimRecipe

    opt = build_optimizer(model, OptimRecipe(lr=1e-4))  # exactly the trainer's optimizer
    pix = torch.randn(batch, 3, image, image)
    ids = torch.randint(0, cfg.vocab_size, (batch, n_text))
    labels = ids.clone()
    labels[:, :7] = -100  # the prompt

    def step():
        loss = model(ids, pix, labels=labels, loss_impl=loss_impl).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    # the fp32 peak is re-measured right after every step, so each step is compared with the machine of its moment
    times, peaks = interleaved_times({"step": step}, rounds=steps, warmup=2, after=lambda: matmul_peak_gflops(reps=3))
    sec = median(times["step"])
    n_img = (image // cfg.patch_size) ** 2
    gflops = genlip_train_flops(cfg, n_img, n_text, batch, int((labels != -100).sum())) / 1e9
    return {"sec_per_step": sec, "samples_per_s": batch / sec, "tokens_per_s": batch * (n_img + n_text) / sec,
            "gflops_per_step": gflops, "achieved_gflops": gflops / sec,
            **mfu_summary(gflops, times["step"], peaks["step"]), "step_times": [round(t, 3) for t in times["step"]]}


def loader_bench(image: int, samples: int = 512) -> float:
    from transformers import AutoTokenizer

    from genlip.data.builders import FixedResBuilder
    from genlip.data.dataset import PretrainStream, make_loader
    from genlip.data.sequence import CaptionEncoder
    from genlip.data.sources import SourceSpec
    from genlip.data.synth import write_corpus

    with tempfile.TemporaryDirectory() as d:
        corpus = write_corpus(d + "/c", samples, shard_size=128, tokenizer_vocab=600)
        tok = AutoTokenizer.from_pretrained(corpus / "tokenizer")
        builder = FixedResBuilder(CaptionEncoder(tok, max_caption_tokens=64), image, [0.5] * 3, [0.5] * 3)
        ds = PretrainStream([SourceSpec(path=str(corpus / "shards" / "*.tar"))], builder, batch_size=8,
                            num_workers=1)
        it = iter(make_loader(ds, 1))
        next(it)  # start-up
        t, n = time.perf_counter(), 0
        for _ in range(40):
            n += next(it)["input_ids"].shape[0]
        return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="mid")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--text", type=int, default=64)
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--loss-impl", default="plain")
    ap.add_argument("--no-loader", action="store_true")
    add_allocator_arg(ap)
    args = ap.parse_args()
    allocator = apply_allocator(args.cpu_allocator)
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = genlip_config(args.config, attn_backend="segments")
    res = train_step_bench(cfg, args.batch, args.text, args.image, args.steps, args.loss_impl)
    peak = res["peak_gflops_best"]
    res.update({"config": args.config, "cpu_allocator": allocator, "batch": args.batch,
                "threads": torch.get_num_threads()})
    if not args.no_loader:
        res["loader_samples_per_s_1_worker"] = loader_bench(args.image)
    print(json.dumps(res))
    print(f"| {args.config} b{args.batch} | {res['samples_per_s']:.1f} | {res['tokens_per_s']:.0f} | "
          f"{res['achieved_gflops']:.0f} | {peak:.0f} | {res['mfu']:.0%} ({res['mfu_conservative']:.0%}) | "
          f"{res.get('loader_samples_per_s_1_worker', float('nan')):.0f} |")


if __name__ == "__main__":
    main()
