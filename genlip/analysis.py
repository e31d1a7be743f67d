"""Looking inside a GenLIP encoder: where attention goes (the attention sink) and what patches "say" (readout).

Attention sink (the paper reports that without the gate, generated text puts 17.1% of its attention on the first
token; with it, 0.1%). For each image the model first captions it (greedy), then the sequence ``[image] + prompt +
caption`` runs once more with an attention plan that computes the probabilities explicitly. Per layer, averaged over
heads, over the query tokens of each kind, then over images:

- ``text_to_first``: mass from generated-text queries on the first token (the top-left patch; there is no BOS);
- ``text_to_image``: mass from generated-text queries on all image tokens (the first one included);
- ``image_to_first``: mass from image queries (the first token itself excluded) on the first token.

If a caption is empty (EOS at once), that image's text queries are the prompt tokens; the count is reported.

Patch readout: every patch's final feature goes through the LM head; the top-k tokens per patch (or per
``region x region`` block of patches, features averaged) are what the encoder "names" there.
"""

from __future__ import annotations

import math

import torch
from PIL import Image, ImageDraw, ImageFont

from genlip.attention import AttentionPlan
from genlip.generation import DEFAULT_PROMPT, _prefill_batch, generate
from genlip.masks import Layout, image_only_layout, prefix_lm_mask

SINK_KEYS = ("text_to_first", "text_to_image", "image_to_first")


class RecordingPlan(AttentionPlan):
    """Dense masked attention with explicit probabilities; calls ``record(layer_index, probs)`` per layer with the
    head-averaged ``(B, Lq, Lk)`` probabilities. Same output as the other backends on a single unpadded row."""

    def __init__(self, layout: Layout, record) -> None:
        self.mask = prefix_lm_mask(layout.sample_ids, layout.image_ids)[:, None]  # (B, 1, L, L)
        self.record, self.layer = record, 0

    def __call__(self, q, k, v):
        scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
        probs = scores.masked_fill(~self.mask, float("-inf")).softmax(dim=-1)
        self.record(self.layer, probs.mean(dim=1))
        self.layer += 1
        return (probs @ v.float()).to(v.dtype)


@torch.no_grad()
def sink_stats(model, tokenizer, images: list[torch.Tensor], prompt: str | None = None,
               max_new_tokens: int = 32) -> dict:
    """Per-layer attention masses (see the module docstring) over ``images`` (each ``(3, H, W)``, normalised)."""
    if not images:
        raise ValueError("no images to analyse")
    prompt_ids = tokenizer(DEFAULT_PROMPT if prompt is None else prompt, add_special_tokens=False).input_ids
    eos = model.config.eos_token_id if model.config.eos_token_id is not None else tokenizer.eos_token_id
    device, dtype = model.lm_head.weight.device, model.lm_head.weight.dtype
    n_layers = len(model.vit.blocks)
    sums = {k: [0.0] * n_layers for k in SINK_KEYS}
    no_text = 0
    for img in images:
        caption = generate(model, [img], prompt_ids, max_new_tokens=max_new_tokens, eos_token_id=eos)[0]
        ids, patches, layout, _ = _prefill_batch(model, [img], list(prompt_ids) + caption)
        ids, patches, layout = ids.to(device), patches.to(device, dtype), layout.to(device)
        n_img = int(layout.is_image[0].sum())
        if caption:
            text_q = torch.arange(n_img + len(prompt_ids), ids.shape[1], device=device)
        else:
            no_text += 1
            text_q = torch.arange(n_img, n_img + len(prompt_ids), device=device)
        img_q = torch.arange(1, n_img, device=device)

        def record(i, p, text_q=text_q, img_q=img_q, n_img=n_img):
            p = p[0]  # (L, L)
            sums["text_to_first"][i] += float(p[text_q, 0].mean())
            sums["text_to_image"][i] += float(p[text_q, :n_img].sum(-1).mean())
            sums["image_to_first"][i] += float(p[img_q, 0].mean()) if len(img_q) else 0.0

        h, layout, _ = model.build_inputs(ids, patches, layout=layout)
        model.vit(h, layout, RecordingPlan(layout, record))
    layers = [{k: sums[k][i] / len(images) for k in SINK_KEYS} for i in range(n_layers)]
    return {"layers": layers, "mean": {k: sum(v[k] for v in layers) / n_layers for k in SINK_KEYS},
            "num_images": len(images), "images_without_generated_text": no_text,
            "gated_attention": bool(model.config.gated_attention)}


@torch.no_grad()
def patch_logits(model, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """LM-head logits ``(gh, gw, vocab)`` of every patch's final (LayerNorm) feature for one ``(3, H, W)`` image."""
    x = image[None].to(model.lm_head.weight.device, model.lm_head.weight.dtype)
    h = model.vit.patch_embed(x)
    gh, gw = model.vit.patch_embed.grid(*x.shape[-2:])
    layout = image_only_layout(1, gh, gw, x.device)
    hidden, _ = model.vit(h, layout)
    return model.lm_head(model.head_input(hidden[0])).float().view(gh, gw, -1), (gh, gw)


def readout(model, tokenizer, image: torch.Tensor, top_k: int = 5, region: int = 1) -> dict:
    """Top-k tokens (decoded, with probabilities) per patch or per ``region x region`` block of patches."""
    if region < 1 or top_k < 1:
        raise ValueError("region and top_k must be positive")
    logits, (gh, gw) = patch_logits(model, image)
    if region > max(gh, gw):
        raise ValueError(f"region {region} is larger than the image's {gh}x{gw} patch grid (at most {max(gh, gw)}, "
                         f"which averages the whole image)")
    rh, rw = math.ceil(gh / region), math.ceil(gw / region)
    cells = []
    for r in range(rh):
        for c in range(rw):
            block = logits[r * region:(r + 1) * region, c * region:(c + 1) * region].reshape(-1, logits.shape[-1])
            probs = block.mean(0).softmax(-1)  # the head is linear: mean of logits = logits of the mean feature
            p, ids = probs.topk(min(top_k, probs.numel()))
            cells.append({"row": r, "col": c, "token_ids": ids.tolist(), "probs": [round(float(x), 6) for x in p],
                          "tokens": [tokenizer.decode([i]) for i in ids.tolist()]})
    return {"grid": [gh, gw], "region": region, "cells_grid": [rh, rw], "patch_size": model.config.patch_size,
            "top_k": top_k, "cells": cells}


def draw_readout(image_pil, result: dict, out_png, min_cell: int = 64) -> None:
    """The image (resized to the model's input grid, scaled up so a cell is at least ``min_cell`` px), a grid
    overlay and each cell's top token(s)."""
    gh, gw = result["grid"]
    region = result["region"]
    P = result["patch_size"]
    scale = max(1, math.ceil(min_cell / (P * region)))
    cell = P * region * scale
    canvas = image_pil.convert("RGB").resize((gw * P * scale, gh * P * scale), Image.BILINEAR)
    draw = ImageDraw.Draw(canvas, "RGBA")
    try:
        font = ImageFont.load_default(size=max(10, cell // 6))
    except TypeError:  # Pillow without FreeType sizes
        font = ImageFont.load_default()
    for c in result["cells"]:
        x0, y0 = c["col"] * cell, c["row"] * cell
        draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], outline=(255, 255, 0, 200))
        for j, tok in enumerate(c["tokens"][:2]):
            text = tok.strip() or repr(tok)
            y = y0 + 2 + j * (cell // 4)
            box = draw.textbbox((x0 + 2, y), text, font=font)
            draw.rectangle(box, fill=(0, 0, 0, 150))
            draw.text((x0 + 2, y), text, fill=(255, 255, 255, 255), font=font)
    canvas.save(out_png)


def plot_sink(results: dict[str, dict], out_png) -> None:
    """One panel per measure, one line per checkpoint, layers on the x axis."""
    import matplotlib  # optional: the [tools] extra, only for plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: the [tools] extra, only for plots

    fig, axes = plt.subplots(1, len(SINK_KEYS), figsize=(5 * len(SINK_KEYS), 3.6), squeeze=False)
    for ax, key in zip(axes[0], SINK_KEYS):
        for name, res in results.items():
            ys = [100 * layer[key] for layer in res["layers"]]
            ax.plot(range(1, len(ys) + 1), ys, marker="o", label=f"{name} (mean {100 * res['mean'][key]:.1f}%)")
        ax.set_title(key.replace("_", " "))
        ax.set_xlabel("layer")
        ax.set_ylabel("attention mass (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
