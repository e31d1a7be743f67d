"""Vision towers behind one interface, loaded from local directories through transformers.

The kind of a tower is read from its config's ``model_type`` (never from a directory name). Every tower is used
the same way: ``hidden_states[feature_layer]`` of its vision model, without a CLS token. For GenLIP ``-1`` is the
final-LayerNorm feature the paper uses; for the baselines ``-1`` is the last block's output and ``-2`` LLaVA's
penultimate layer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoModel, PretrainedConfig

from genlip.modeling import GenLIPVisionModel

# model_type of the vision config -> (kind, vision model class name in transformers or genlip)
_KINDS = {
    "genlip": "genlip",
    "siglip_vision_model": "siglip",
    "siglip2_vision_model": "siglip2",
    "aimv2_vision_model": "aimv2",
    "clip_vision_model": "clip",
}
NATIVE_KINDS = ("genlip", "siglip2")  # can take images at their own aspect ratio


@dataclass
class TowerInfo:
    kind: str
    patch_size: int
    image_size: int | None  # the resolution of learned absolute position embeddings (None: any resolution)
    hidden_size: int
    has_cls: bool
    image_mean: list[float]
    image_std: list[float]


def vision_config_of(config: PretrainedConfig) -> PretrainedConfig:
    """The vision part of a composite config (SigLIP, CLIP, AIMv2 image-text checkpoints) or the config itself."""
    return getattr(config, "vision_config", None) or config


def tower_info(vcfg: PretrainedConfig) -> TowerInfo:
    kind = _KINDS.get(vcfg.model_type)
    if kind is None:
        raise ValueError(f"unsupported vision tower type {vcfg.model_type!r}; supported: {sorted(_KINDS)}")
    if kind == "genlip":
        return TowerInfo(kind, vcfg.patch_size, None, vcfg.hidden_size, False, list(vcfg.image_mean),
                         list(vcfg.image_std))
    clip_norm = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])
    mean, std = clip_norm if kind in ("clip", "aimv2") else ([0.5] * 3, [0.5] * 3)
    image_size = None if kind == "siglip2" else int(vcfg.image_size)
    return TowerInfo(kind, int(vcfg.patch_size), image_size, int(vcfg.hidden_size), kind == "clip", mean, std)


def looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be a local path, never a Hugging Face Hub id (``name`` or ``owner/name``): it starts
    with ``/``, ``.`` or ``~``, or has more than one path separator, or ends with one."""
    seps = tuple({"/", os.sep, *(os.altsep or "")})
    return name.startswith((".", "~", *seps)) or sum(map(name.count, seps)) > 1 or name.endswith(seps)


def load_vision_config(path: str) -> PretrainedConfig:
    """The vision config of a checkpoint directory (or Hub id). A path that is not a directory, or anything
    transformers cannot load a config from, is a one-line :class:`FileNotFoundError`."""
    path = os.path.expanduser(path)
    if looks_like_path(path) and not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such directory")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path}: not a model directory (no config.json)")
    try:
        return vision_config_of(AutoConfig.from_pretrained(path))
    except OSError as e:  # a name that is no local directory and that the Hub does not give (offline, say)
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f"{path}: neither a local directory nor a model the Hugging Face Hub gives ({why})") \
            from e


def load_tower(path: str, dtype: torch.dtype = torch.float32):
    """The vision model of a local checkpoint (a vision-only or an image-text directory) and its :class:`TowerInfo`."""
    path = os.path.expanduser(path)
    vcfg = load_vision_config(path)
    info = tower_info(vcfg)
    model = AutoModel.from_pretrained(path, config=vcfg, dtype=dtype) if info.kind != "genlip" else None
    if info.kind == "genlip":
        model = GenLIPVisionModel.from_pretrained(path, dtype=dtype)
    elif not _is_vision_model(model):
        raise ValueError(f"{path}: expected a vision model, got {type(model).__name__}")
    return model, info


def _is_vision_model(model) -> bool:
    return type(model).__name__.endswith("VisionModel")
