"""Tiny random vision towers of every supported kind and a tiny Qwen2, saved as local checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch

TOWER_MODES = {"genlip": ["resize", "anyres", "native"], "siglip": ["resize", "anyres"],
               "clip": ["resize", "anyres"], "aimv2": ["resize", "anyres"], "siglip2": ["native"]}


def make_towers(root: Path) -> dict[str, Path]:
    from transformers import (
        Aimv2VisionConfig,
        Aimv2VisionModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        Siglip2VisionConfig,
        Siglip2VisionModel,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    import genlip

    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=8)
    towers = {
        "siglip": SiglipVisionModel(SiglipVisionConfig(**small, image_size=32)),
        "clip": CLIPVisionModel(CLIPVisionConfig(**small, image_size=32)),
        "aimv2": Aimv2VisionModel(Aimv2VisionConfig(**small, image_size=32)),
        "siglip2": Siglip2VisionModel(Siglip2VisionConfig(**small, num_patches=64)),
        "genlip": genlip.GenLIPVisionModel(genlip.genlip_config("tiny", patch_size=8, num_hidden_layers=2)),
    }
    out = {}
    for name, model in towers.items():
        model.save_pretrained(root / name)
        out[name] = root / name
    return out


def make_llm(root: Path) -> Path:
    from genlip.data.tokenizer import train_tokenizer
    from mllm.tiny import make_tiny_llm

    texts = ["what color is the square? red", "describe the image. a red square on white", "user", "assistant",
             "You are a helpful assistant.", "which bar is the tallest? B", "the word apple"] * 30
    train_tokenizer(texts, root / "tok", vocab_size=320)
    return make_tiny_llm(root / "tok", root / "llm", hidden=32, layers=1)
