"""MLLM training tokens/s and evaluation answers/s of the harness, measured in one run on this machine.

    python benchmarks/bench_mllm.py [--encoder small] [--llm-hidden 256] [--llm-layers 4] [--image 224]

A GenLIP tower (random weights of a preset) + 2-layer MLP projector + a random Qwen2 of the given size, LLaVA
``resize`` mode, on the generated instruction set. Training: forward + backward + AdamW over the trainable groups of
the frozen protocol (projector + LLM) and the unfrozen one (+ encoder); tokens/s counts every non-padding position,
image tokens included. Evaluation: greedy answers with the KV cache, the path lmms-eval uses (``chat.answer``),
answers/s at ``max_new_tokens``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import add_allocator_arg, apply_allocator, timeit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="small")
    ap.add_argument("--llm-hidden", type=int, default=256)
    ap.add_argument("--llm-layers", type=int, default=4)
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--answers", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    add_allocator_arg(ap)
    args = ap.parse_args()
    allocator = apply_allocator(args.cpu_allocator)
    torch.set_num_threads(os.cpu_count() or 1)

    from genlip.config import genlip_config
    from genlip.data.synth import write_corpus
    from genlip.data.synth_sft import write_sft
    from genlip.modeling import GenLIPVisionModel
    from mllm.build import build_mllm, image_token_id
    from mllm.chat import answer
    from mllm.data import Collator, LlavaDataset
    from mllm.processing import ConversationEncoder, make_image_processor
    from mllm.tiny import make_tiny_llm

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        corpus = write_corpus(d / "c", 64, shard_size=64, tokenizer_vocab=600)
        torch.manual_seed(0)
        GenLIPVisionModel(genlip_config(args.encoder, image_size=args.image)).save_pretrained(str(d / "tower"))
        make_tiny_llm(corpus / "tokenizer", d / "llm", hidden=args.llm_hidden, layers=args.llm_layers)
        sft = write_sft(d / "sft", max(args.batch * 2, args.answers))
        model, tok, spec = build_mllm(str(d / "tower"), str(d / "llm"), "resize", image_size=args.image)
        ip = make_image_processor(spec)
        enc = ConversationEncoder(tok, spec, image_token_id(tok), max_length=2048)
        ds = LlavaDataset(sft / "instruct.json", sft / "images", enc)
        batch = Collator(spec, ip, tok.pad_token_id)([ds[i] for i in range(args.batch)])
        batch.pop("skip_reasons"), batch.pop("cut_samples")
        tokens = int(batch["attention_mask"].sum())  # <image> is expanded to its feature tokens in input_ids
        res = {"encoder": args.encoder, "image": args.image, "llm": f"qwen2 h{args.llm_hidden} x{args.llm_layers}",
               "batch": args.batch, "tokens_per_batch": tokens}
        tower = set(model.model.vision_tower.parameters())
        for protocol in ("frozen", "unfrozen"):
            model.train()
            for p in model.parameters():
                p.requires_grad_(protocol == "unfrozen" or p not in tower)
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)

            def step(opt=opt):
                out = model(**batch)
                out.loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            sec = timeit(step, warmup=2, iters=args.steps)
            res[f"train_{protocol}_tokens_per_s"] = tokens / sec
            res[f"train_{protocol}_sec_per_step"] = sec
        model.eval()
        from PIL import Image

        qs = []
        for item in json.loads((sft / "instruct.json").read_text())[: args.answers]:
            qs.append((Image.open(sft / "images" / item["image"]).convert("RGB"),
                       item["conversations"][0]["value"].replace("<image>\n", "")))
        answer(model, tok, spec, ip, qs[0][0], qs[0][1], max_new_tokens=args.max_new_tokens)  # warm-up
        t = time.perf_counter()
        for img, q in qs:
            answer(model, tok, spec, ip, img, q, max_new_tokens=args.max_new_tokens)
        res["eval_answers_per_s"] = len(qs) / (time.perf_counter() - t)
        res["max_new_tokens"] = args.max_new_tokens
    res["cpu_allocator"] = allocator
    print(json.dumps(res))
    print(f"| {args.encoder} @{args.image} + {res['llm']} | b{args.batch} | "
          f"{res['train_frozen_tokens_per_s']:.0f} | {res['train_unfrozen_tokens_per_s']:.0f} | "
          f"{res['eval_answers_per_s']:.2f} |")


if __name__ == "__main__":
    main()
