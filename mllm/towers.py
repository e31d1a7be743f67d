"""Vision towers behind one interface, loaded from local directories through transformers.

The kind of a tower is read from its config's ``model_type`` (never from a directory name). Every tower is used
the same way: ``hidden_states[feature_layer]`` of its vision model, without a CLS token. For GenLIP ``-1`` is the
final-LayerNorm feature the paper uses; for the baselines ``-1`` is the last block's output and ``-2`` LLaVA's
penultimate layer.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, PretrainedConfig
from transformers.utils import logging as hf_logging

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

log = logging.getLogger(__name__)


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


def check_tower_use(vcfg: PretrainedConfig, mode: str, image_size: int | None,
                    feature_layer: int) -> tuple[TowerInfo, int]:
    """The tower's :class:`TowerInfo` and the image side it will be fed, or a one-line ``ValueError`` naming the
    recipe key (``model.mode``, ``model.image_size``, ``model.feature_layer``) that does not fit this tower."""
    info = tower_info(vcfg)
    if mode == "native" and info.kind not in NATIVE_KINDS:
        raise ValueError(f"model.mode=native needs a GenLIP or SigLIP2-NaFlex tower, not {info.kind}; use "
                         "model.mode=resize or anyres")
    if mode != "native" and info.kind == "siglip2":
        raise ValueError("a SigLIP2-NaFlex tower takes native-resolution input: set model.mode=native")
    size = image_size or info.image_size or 384
    if size % info.patch_size:
        raise ValueError(f"model.image_size={size} is not a multiple of the {info.kind} tower's patch size "
                         f"{info.patch_size}")
    if info.image_size is not None and size != info.image_size:
        raise ValueError(f"model.image_size={size}: the {info.kind} tower has position embeddings for "
                         f"{info.image_size} px; set model.image_size={info.image_size} (or null: the tower's own)")
    n = int(vcfg.num_hidden_layers)  # hidden_states: the embeddings and each layer's output, n + 1 entries
    if not -(n + 1) <= feature_layer <= n:
        raise ValueError(f"model.feature_layer={feature_layer}: the {info.kind} tower has {n} layers, so "
                         f"hidden_states[i] exists for i in {-(n + 1)}..{n} (-1: the last, -2: the penultimate)")
    return info, size


def own_normalisation(path: str) -> tuple[list[float], list[float]] | None:
    """The ``image_mean`` / ``image_std`` of a local tower directory's ``preprocessor_config.json`` (the processor
    the tower was trained with), or None where it has none. A file that does not parse, or values that are not three
    numbers each (a positive std), is a one-line ``ValueError``: the tower would be fed differently normalised images
    without a word."""
    f = Path(os.path.expanduser(path)) / "preprocessor_config.json"
    if not f.is_file():
        return None
    try:
        cfg = json.loads(f.read_text())
    except (ValueError, OSError) as e:
        raise ValueError(f"{f}: not a readable processor config ({e})") from None
    mean, std = cfg.get("image_mean"), cfg.get("image_std")
    if mean is None and std is None:
        return None

    def three(v) -> bool:
        return isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)
    if not (three(mean) and three(std) and all(x > 0 for x in std)):
        raise ValueError(f"{f}: image_mean and image_std must be three numbers each (std above 0), got {mean}, {std}")
    return [float(x) for x in mean], [float(x) for x in std]


def looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be a local path, never a Hugging Face Hub id (``name`` or ``owner/name``): it starts
    with ``/``, ``.`` or ``~``, or has more than one path separator, or ends with one, or its first part is a local
    directory (``models/siglip-typo`` next to a ``models/`` folder: a typo, not a Hub id to wait for)."""
    seps = tuple({"/", os.sep, *(os.altsep or "")})
    if name.startswith((".", "~", *seps)) or sum(map(name.count, seps)) > 1 or name.endswith(seps):
        return True
    first = re.split("|".join(map(re.escape, seps)), name)[0]
    return first != name and os.path.isdir(first)


def local_only() -> bool:
    """Hugging Face Hub ids are read from the local Hugging Face cache only (no network access unless asked for),
    unless ``HF_HUB_OFFLINE=0`` is set: then what the cache lacks is downloaded. Local directories never need it."""
    return os.environ.get("HF_HUB_OFFLINE") != "0"


def load_vision_config(path: str) -> PretrainedConfig:
    """The vision config of a checkpoint directory (or Hub id). A path that is not a directory, or anything
    transformers cannot load a config from, is a one-line :class:`FileNotFoundError`."""
    path = os.path.expanduser(path)
    if looks_like_path(path) and not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such directory")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path}: not a model directory (no config.json)")
    try:
        return vision_config_of(AutoConfig.from_pretrained(path, local_files_only=local_only()))
    except OSError as e:  # a name that is no local directory and that the cache (or the Hub) does not give
        if local_only():
            raise FileNotFoundError(f"{path}: no such directory, nor a model in the local Hugging Face cache "
                                    "(HF_HUB_OFFLINE=0 lets a Hub id be downloaded)") from e
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f"{path}: neither a local directory nor a model the Hugging Face Hub gives ({why})") \
            from e


def load_tower(path: str, dtype: torch.dtype = torch.float32):
    """The vision model of a local checkpoint (a vision-only or an image-text directory) and its :class:`TowerInfo`."""
    path = os.path.expanduser(path)
    vcfg = load_vision_config(path)
    info = tower_info(vcfg)
    if info.kind == "genlip":
        return GenLIPVisionModel.from_pretrained(path, dtype=dtype, local_files_only=local_only()), info
    top = AutoConfig.from_pretrained(path, local_files_only=local_only())
    quiet = top.model_type != vcfg.model_type  # an image-text checkpoint: its text tower's weights are left out
    verbosity = hf_logging.get_verbosity()
    if quiet:  # transformers would list every text-tower weight as unexpected
        hf_logging.set_verbosity_error()
    try:
        model = AutoModel.from_pretrained(path, config=vcfg, dtype=dtype, local_files_only=local_only())
    finally:
        hf_logging.set_verbosity(verbosity)
    if quiet:
        log.info("%s: the vision tower of a %s image-text checkpoint (its text tower is not loaded)", path,
                 top.model_type)
    if not _is_vision_model(model):
        raise ValueError(f"{path}: expected a vision model, got {type(model).__name__}")
    return model, info


def _is_vision_model(model) -> bool:
    return type(model).__name__.endswith("VisionModel")
