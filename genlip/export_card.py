"""The model card (``README.md``) written with every export: what the encoder is, how to load it, how it was
trained (read from the checkpoint's own ``recipe.yaml`` and ``trainer_state.json``; a model without them, such as an
earlier export, gets a card without that part) and how its inputs are prepared. The Hugging Face Hub shows the file
as the model's page; its front matter names the library that loads it."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from genlip.data.decode import SkipStats

PAPER = "https://arxiv.org/abs/2605.00809"

LOAD = {
    "hf": """```python
import genlip  # the GenLIP toolkit: registers GenLIP with transformers' Auto classes (no trust_remote_code)
from transformers import AutoImageProcessor, AutoModel

model = AutoModel.from_pretrained("{out}")
processor = AutoImageProcessor.from_pretrained("{out}")
features = model(**processor(images=image, return_tensors="pt")).last_hidden_state  # [1, patches, {width}]
```""",
    "timm": """```python
import timm

model = timm.create_model("local-dir:{out}", pretrained=True)  # without pretrained=True the weights are random
features = model.forward_features(pixels)  # [batch, patches, {width}]
```
timm >= 1.0.31 (NaFlexViT with gated attention and interleaved MRoPE).""",
}


def _read(path: Path, how) -> dict:
    try:
        data = how(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _training(src: Path) -> list[str]:
    recipe = _read(src / "recipe.yaml", yaml.safe_load)
    if not recipe:
        return []
    model, data, train = (recipe.get(k) or {} for k in ("model", "data", "train"))
    state = _read(src / "trainer_state.json", json.loads)
    native = bool(data.get("native"))
    objective = model.get("objective", "generative")
    lines = ["## Training", ""]
    if objective != "generative":
        lines += [f"**Objective: {objective}** (the contrastive baseline of the comparison, trained with a separate "
                  "text tower that is not exported), not GenLIP's next-token prediction.", ""]
    step = state.get("step")
    steps = train.get("steps")
    done = f"{step} of {steps} steps" if step is not None and step != steps else f"{steps} steps"
    if native:
        lines.append(f"- Stage 2 (native aspect ratio, packed rows of {data.get('max_seq_len')} tokens, "
                     f"{data.get('min_image_tokens')}-{data.get('max_image_tokens')} patches per image): {done} of "
                     f"{train.get('global_batch')} rows")
    else:
        lines.append(f"- Stage 1 ({data.get('image_size')} px squares): {done} of {train.get('global_batch')} "
                     "image-caption pairs")
    if model.get("init_from"):
        lines.append(f"- Started from `{model['init_from']}`")
    if state.get("samples"):
        lines.append(f"- {state['samples']:,} samples, {state.get('tokens', 0):,} tokens seen")
    optim = recipe.get("optim") or {}
    if optim:
        lines.append(f"- AdamW, peak learning rate {optim.get('lr')}, weight decay {optim.get('weight_decay')}")
    for s in data.get("sources") or []:
        if isinstance(s, dict):
            lines.append(f"- Data: `{s.get('path')}` ({s.get('type')}, weight {s.get('weight', 1.0)}, caption from "
                         f"{', '.join(s.get('caption_fields') or []) or 'its default fields'})")
    if data.get("synth"):
        lines.append("- Data: the toolkit's generated corpus (`genlip-data synth`): a test model, not a useful encoder")
    skips = state.get("skips") or {}
    if skips.get("skipped"):
        lines.append(f"- Records skipped: {sum(skips['skipped'].values())} of {skips.get('seen', '?')} "
                     f"({', '.join(f'{k} {v}' for k, v in sorted(skips['skipped'].items()))})")
        by_source = SkipStats.from_dict(skips).source_summary()
        if by_source:
            lines.append(f"- Skipped by source: {by_source}")
    return lines + [""]


def _intro(src: Path | None, random_seed: int | None) -> str:
    genlip = f"GenLIP (\"Let ViT Speak: Generative Language-Image Pre-training\", [arXiv 2605.00809]({PAPER}))"
    objective = ((_read(src / "recipe.yaml", yaml.safe_load).get("model") or {}).get("objective", "generative")
                 if src is not None else "generative")
    if random_seed is not None:
        return f"A ViT with the architecture of {genlip}, not trained."
    if objective != "generative":
        return (f"A ViT with the architecture of {genlip}, trained with the {objective} contrastive objective (the "
                "baseline of a comparison), not with GenLIP's.")
    return (f"A ViT pretrained with {genlip}: one Transformer reads the image patches followed by the caption and "
            "learns to predict the caption's next token, the patches attending to each other in both directions and "
            "the text causally to everything before it.")


def model_card(config, src: Path | None, kind: str, out: str | Path, n_params: int,
               random_seed: int | None = None) -> str:
    """The card's text. ``config``: the encoder's ``GenLIPConfig``; ``src``: the checkpoint it came from;
    ``kind``: ``hf`` or ``timm``; ``out``: where the export is (for the loading example); ``random_seed``: the
    weights are not ``src``'s but a random initialisation with its architecture (``genlip-export random``)."""
    library = "transformers" if kind == "hf" else "timm"
    width, layers, heads = config.hidden_size, config.num_hidden_layers, config.num_attention_heads
    size, patch = config.image_size, config.patch_size
    lines = [
        "---",
        f"library_name: {library}",
        "pipeline_tag: image-feature-extraction",
        "tags: [genlip, vision-encoder, image-feature-extraction]",
        "---",
        "",
        f"# GenLIP vision encoder ({layers} x {width}, {n_params / 1e6:.1f}M parameters)",
        "",
        _intro(src, random_seed) + " This export keeps the encoder alone (no text embedding, no LM head), used on "
        "images with full attention: its features, after the final LayerNorm, are one vector per patch, with no "
        "class token.",
        "",
        (f"Exported with `genlip-export {kind}`{f' from `{src}`' if src else ''}." if random_seed is None else
         f"**Random weights, not trained**: the toolkit's initialisation with seed {random_seed}, written by "
         f"`genlip-export random` with the architecture and preprocessing of `{src}`, as the untrained baseline of "
         "a comparison."),
        "",
        "## Use",
        "",
        LOAD[kind].format(out=out, width=width),
        "",
        "## Architecture",
        "",
        "| layers | width | heads | patch | positions | attention |",
        "|---|---|---|---|---|---|",
        f"| {layers} | {width} | {heads} | {patch} | 3-axis rotary (MRoPE; on an image alone, 2-D on row and column) | "
        f"{'gated (an elementwise sigmoid gate before the output projection)' if config.gated_attention else 'plain'}"
        " |",
        "",
        "## Inputs",
        "",
        f"- Any size whose sides are multiples of {patch} px (rotary positions, no position table to interpolate); "
        f"{size} px squares by default.",
        f"- Pixels scaled to [0, 1], then normalised with mean {list(config.image_mean)} and std "
        f"{list(config.image_std)}, RGB.",
        "",
    ]
    if src is not None and random_seed is None:
        lines += _training(src)
    return "\n".join(lines)


def write_card(out: Path, config, src: Path | None, kind: str, n_params: int, random_seed: int | None = None) -> None:
    (out / "README.md").write_text(model_card(config, src, kind, out, n_params, random_seed))
