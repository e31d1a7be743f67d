"""Assemble and load MLLMs: a vision tower + a 2-layer MLP projector + a causal LM, as transformers LLaVA models.

``resize`` builds ``LlavaForConditionalGeneration``, ``anyres`` ``LlavaNextForConditionalGeneration`` (both load
with plain transformers), ``native`` this project's :class:`~mllm.native.NativeLlavaForConditionalGeneration`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaProcessor,
)

import mllm  # noqa: F401  (registers the native variant)
from mllm.image_modes import default_pinpoints, resize_num_tokens
from mllm.native import NativeLlavaConfig, NativeLlavaForConditionalGeneration
from mllm.processing import CHAT_TEMPLATE, IMAGE_PLACEHOLDER, ImageSpec, make_image_processor
from mllm.towers import check_tower_use, load_tower, local_only, own_normalisation

log = logging.getLogger(__name__)
MODES = ("resize", "anyres", "native")


def image_token_id(tokenizer) -> int:
    """Add ``<image>`` as a special token when the tokenizer lacks it; return its id."""
    if IMAGE_PLACEHOLDER not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]})
    return tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)


def build_mllm(vision_path: str, llm_path: str, mode: str = "resize", image_size: int | None = None,
               feature_layer: int = -1, pinpoints: list[list[int]] | None = None, min_tokens: int = 16,
               max_tokens: int = 576, dtype: torch.dtype = torch.float32):
    """A new MLLM from a local vision checkpoint and a local LLM checkpoint. Returns ``(model, tokenizer, spec)``;
    the projector is freshly initialised, the tower and LLM weights are the checkpoints'."""
    if mode not in MODES:
        raise ValueError(f"image mode must be one of {MODES}, got {mode!r}")
    tower, _ = load_tower(vision_path, dtype)
    info, size = check_tower_use(tower.config, mode, image_size, feature_layer)
    mean, std = info.image_mean, info.image_std  # the kind's published normalisation, for a tower without its own
    own = own_normalisation(vision_path) if info.kind != "genlip" else None  # GenLIP's config holds its own
    if own is not None and own != (mean, std):
        log.info("%s: image_mean %s / image_std %s from its preprocessor_config.json", vision_path, *own)
    mean, std = own or (mean, std)
    spec = ImageSpec(mode=mode, kind=info.kind, patch_size=info.patch_size, image_size=size,
                     image_mean=mean, image_std=std, has_cls=info.has_cls,
                     pinpoints=pinpoints or (default_pinpoints(size) if mode == "anyres" else []),
                     min_tokens=min_tokens, max_tokens=max_tokens)
    if info.kind == "genlip":
        tower.config.image_size = size  # the tile / square size LLaVA(-NeXT) will feed it
    tokenizer = AutoTokenizer.from_pretrained(llm_path, local_files_only=local_only())
    img_id = image_token_id(tokenizer)
    llm = AutoModelForCausalLM.from_pretrained(llm_path, dtype=dtype, local_files_only=local_only())
    # the LLM's own tying of its output layer to its input embeddings: LlavaNextConfig would otherwise untie a tied
    # LLM (Qwen2.5-0.5B..3B), a separate head of vocab x hidden parameters that training moves apart
    common = dict(vision_config=tower.config, text_config=llm.config, image_token_id=img_id,
                  tie_word_embeddings=llm.config.tie_word_embeddings,
                  vision_feature_layer=feature_layer, projector_hidden_act="gelu", multimodal_projector_bias=True,
                  vision_feature_select_strategy="default" if info.has_cls else "full")
    if mode == "resize":
        config = LlavaConfig(**common, image_seq_length=resize_num_tokens(size, info.patch_size))
        model = LlavaForConditionalGeneration(config)
    elif mode == "anyres":
        config = LlavaNextConfig(**common, image_grid_pinpoints=spec.pinpoints)
        model = LlavaNextForConditionalGeneration(config)
    else:
        config = NativeLlavaConfig(**common)
        model = NativeLlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(tower.state_dict())
    model.model.language_model.load_state_dict(llm.model.state_dict())
    model.lm_head.load_state_dict(llm.lm_head.state_dict())
    if len(tokenizer) > model.config.text_config.vocab_size:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    model.to(dtype)
    return model, tokenizer, spec


def save_mllm(directory: str | Path, model, tokenizer, spec: ImageSpec, state_dict: dict | None = None) -> None:
    """A Hugging Face directory: weights + config, tokenizer, image processor / processor, and the image spec."""
    model.save_pretrained(directory, state_dict=state_dict)
    save_processing(directory, model.config, tokenizer, spec)


def save_processing(directory: str | Path, config, tokenizer, spec: ImageSpec) -> None:
    """Everything but the weights: tokenizer, image spec, and (``resize``/``anyres``) transformers' processor."""
    tokenizer.save_pretrained(directory)
    spec.save(directory)
    ip = make_image_processor(spec)
    if ip is not None:
        cls = LlavaProcessor if spec.mode == "resize" else LlavaNextProcessor
        proc = cls(image_processor=ip, tokenizer=tokenizer, patch_size=spec.patch_size,
                   vision_feature_select_strategy=config.vision_feature_select_strategy,
                   image_token=IMAGE_PLACEHOLDER, num_additional_image_tokens=1 if spec.has_cls else 0,
                   chat_template=CHAT_TEMPLATE)
        proc.save_pretrained(directory)


def load_mllm(directory: str | Path, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer, spec, image_processor)`` of a saved MLLM directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory (give genlip-mllm's output_dir/final)")
    if not (directory / "genlip_mllm_image.json").exists():
        raise FileNotFoundError(f"{directory} is not an MLLM directory of this toolkit (no genlip_mllm_image.json)")
    model = AutoModelForImageTextToText.from_pretrained(directory, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    spec = ImageSpec.load(directory)
    return model, tokenizer, spec, make_image_processor(spec)
