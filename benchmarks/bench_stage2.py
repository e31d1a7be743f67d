"""Stage-2 figures: packing fill ratio on a realistic length mix, per-sample SDPA against one dense mask at 4096
tokens, FlexAttention's block mask built from id ranges against ``create_block_mask`` at the paper's row sizes, and
packed training throughput (tokens/s, MFU against the fp32 peak measured in the same run).

    python benchmarks/bench_stage2.py
"""

from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import add_allocator_arg, apply_allocator, matmul_peak_gflops, timeit  # noqa: E402

from genlip.attention import build_plan  # noqa: E402
from genlip.config import genlip_config  # noqa: E402
from genlip.data.packing import RowPacker, collate_packed, pad_to_longest_fill, simulate_stage2_lengths  # noqa: E402
from genlip.masks import packed_layout  # noqa: E402
from genlip.modeling import GenLIPForCaptioning  # noqa: E402


def packing_fill() -> dict:
    lengths = simulate_stage2_lengths(20000, seed=0)
    rows = RowPacker(16384, window=256, min_fill=0.95, length=lambda x: x).take(iter(lengths), 1000)
    fill = sum(map(sum, rows)) / (16384 * len(rows))
    per_row = sum(len(r) for r in rows) / len(rows)
    return {"mean_len": sum(lengths) / len(lengths), "ffd_fill": fill, "samples_per_row": per_row,
            "pad_to_longest_fill_b14": pad_to_longest_fill(lengths, 14)}


def attention(L: int = 4096, n: int = 12, heads: int = 8, hd: int = 64) -> dict:
    per = L // n
    grid = int((per * 0.7) ** 0.5)
    samples = [[("image", (grid, grid)), ("text", per - grid * grid)] for _ in range(n)]
    lay = packed_layout([samples], L)
    out = {}
    for backend in ("segments", "dense"):
        plan = build_plan(lay, backend)
        q, k, v = (torch.randn(1, heads, L, hd, requires_grad=True) for _ in range(3))

        def fwd(plan=plan, q=q, k=k, v=v):
            with torch.no_grad():
                plan(q, k, v)

        def fwd_bwd(plan=plan, q=q, k=k, v=v):
            plan(q, k, v).sum().backward()

        out[backend] = {"fwd_ms": 1e3 * timeit(fwd, 1, 5), "fwd_bwd_ms": 1e3 * timeit(fwd_bwd, 1, 5)}
    out["speedup_fwd_bwd"] = out["dense"]["fwd_bwd_ms"] / out["segments"]["fwd_bwd_ms"]
    return out


def packed_rows(rows: int, row_len: int, seed: int = 0, grid=(4, 32), text=(200, 1000)) -> list:
    """Rows of a stage-2-like mix (image grids of 4..32 per side, 200..1000 text tokens), filled first-fit."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        used, samples = 0, []
        while True:
            gh, gw, n_txt = rng.randint(*grid), rng.randint(*grid), rng.randint(*text)
            if used + gh * gw + n_txt > row_len:
                break
            samples.append([("image", (gh, gw)), ("text", n_txt)])
            used += gh * gw + n_txt
        out.append(samples)
    return out


def image_heavy_rows(rows: int, row_len: int, vocab: int, patch: int, cap: int, n: int = 4000, min_img: int = 16,
                     min_text: int = 8, max_text: int | None = None, prompt: int = 7, window: int = 256,
                     seed: int = 0) -> list:
    """Packed rows of samples whose lengths follow ``simulate_stage2_lengths(n, seed=1, max_tokens=cap)``, each an
    image of all but ~80 tokens (``min_img..cap`` patches) and the rest text (``min_text..max_text`` tokens, the
    first ``prompt`` unsupervised), packed by ``RowPacker(row_len, window, 0.95)``: ``collate_packed``'s input.
    Patches are drawn after packing (only their count matters to the packer)."""
    g = torch.Generator().manual_seed(seed)
    exs = []
    for ln in simulate_stage2_lengths(n, seed=1, max_tokens=cap):
        n_img = max(min_img, min(ln - 80, cap))
        gh = max(1, int(n_img**0.5))
        gw = max(1, n_img // gh)
        txt = min(max(min_text, ln - gh * gw), max_text or ln)
        exs.append({"patches": torch.empty(gh * gw, 3, patch, patch), "grid": (gh, gw),
                    "input_ids": torch.randint(0, vocab, (txt,), generator=g),
                    "labels": torch.cat([torch.full((prompt,), -100),
                                         torch.randint(0, vocab, (txt - prompt,), generator=g)])})
    packed = RowPacker(row_len, window, 0.95).take(iter(exs), rows)
    for row in packed:
        for ex in row:
            ex["patches"] = torch.randn(ex["patches"].shape, generator=g)
    return packed


def block_mask_figures(rows: int, row_len: int, device: str, timer, mix: tuple = ()) -> dict:
    """Building one step's FlexAttention block mask for ``rows x row_len`` packed tokens on ``device``:
    ``create_block_mask`` (the mask evaluated on every pair) against :func:`genlip.attention.layout_block_mask`
    (per-block id ranges), timed by ``timer(fn) -> seconds``; ``same_blocks`` compares their blocks."""
    from torch.nn.attention.flex_attention import create_block_mask

    from genlip.attention import FlexPlan, layout_block_mask

    lay = packed_layout(packed_rows(rows, row_len, 0, *mix), row_len).to(device)
    sids, iids = lay.sample_ids, lay.image_ids
    mm = FlexPlan.mask_mod_for(sids, iids)

    def reference():
        return create_block_mask(mm, rows, None, row_len, row_len, device=device)

    def ours():
        return layout_block_mask(sids, iids, mm)

    a, b = reference(), ours()
    same = all(torch.equal(x, y) for x, y in ((a.kv_num_blocks, b.kv_num_blocks), (a.kv_indices, b.kv_indices),
                                              (a.full_kv_num_blocks, b.full_kv_num_blocks)))
    t_ref, t_ours = timer(reference), timer(ours)
    return {"create_block_mask_ms": 1e3 * t_ref, "from_id_ranges_ms": 1e3 * t_ours, "speedup": t_ref / t_ours,
            "same_blocks": same, "sparsity_pct": b.sparsity()}


def block_mask(reps: int = 3) -> dict:
    return {f"{r}x{n}": block_mask_figures(r, n, "cpu", lambda fn: timeit(fn, 1, reps))
            for r, n in ((4, 8192), (1, 16384))}


def train_throughput(row_len: int = 4096, rows: int = 1, steps: int = 5) -> dict:
    from genlip.train.optim import build_optimizer
    from genlip.train.recipe import OptimRecipe

    cfg = genlip_config("mid", attn_backend="segments")
    torch.manual_seed(0)
    model = GenLIPForCaptioning(cfg).train()
    opt = build_optimizer(model, OptimRecipe(lr=1e-4))
    packed = image_heavy_rows(rows, row_len, cfg.vocab_size, cfg.patch_size, cap=256, n=400, min_img=1, min_text=4,
                              prompt=2, window=64)
    batch = collate_packed(packed, row_len, 0)

    def step():
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    sec = timeit(step, 1, steps)
    d, f, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    tokens = int((batch["sample_ids"] >= 0).sum())
    pairs = 0
    for row in packed:
        for e in row:
            ni, nt = e["patches"].shape[0], e["input_ids"].numel()
            pairs += ni * ni + nt * ni + nt * (nt + 1) // 2
    sup = int((batch["labels"] != -100).sum())
    flops = 3 * (L * (tokens * 2 * (5 * d * d + 3 * d * f) + 4 * d * pairs) + 2 * sup * d * cfg.vocab_size
                 + 2 * sum(e["patches"].shape[0] for r in packed for e in r) * 768 * d)
    return {"row_len": row_len, "rows": rows, "tokens": tokens, "samples": sum(len(r) for r in packed),
            "fill": tokens / (rows * row_len), "sec_per_step": sec, "tokens_per_s": tokens / sec,
            "achieved_gflops": flops / sec / 1e9}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_allocator_arg(ap)
    args = ap.parse_args()
    allocator = apply_allocator(args.cpu_allocator)
    torch.set_num_threads(os.cpu_count() or 1)
    res = {"cpu_allocator": allocator, "packing": packing_fill(), "attention_4096": attention(),
           "block_mask": block_mask()}
    peak0 = matmul_peak_gflops()
    res["train"] = train_throughput()
    peak = max(peak0, matmul_peak_gflops())
    res["train"]["matmul_peak_gflops"] = peak
    res["train"]["mfu"] = res["train"]["achieved_gflops"] / peak
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
