"""Export the encoder alone as a Hugging Face vision model: ``config.json`` (``GenLIPVisionModel``), the encoder's
weights in safetensors (no text embedding, no LM head) and a ``preprocessor_config.json`` for transformers'
``SiglipImageProcessor`` (resize to a square, rescale 1/255, normalise with the model's mean/std: stage 1's
transform). Load it with ``import genlip`` then ``AutoModel.from_pretrained(dir)`` and
``AutoImageProcessor.from_pretrained(dir)``; no ``trust_remote_code``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from safetensors import safe_open

from genlip.export_card import write_card
from genlip.modeling import GenLIPVisionModel
from genlip.run.checkpoint import resolve_weights_dir
from genlip.run.extras import installed


def export_hf(model_dir: str | Path, out_dir: str | Path, image_size: int | None = None,
              dtype: torch.dtype = torch.float32) -> Path:
    """``model_dir``: a GenLIP checkpoint or run directory (captioning or vision-only) or a loaded model."""
    src = resolve_weights_dir(model_dir)
    enc = GenLIPVisionModel.from_pretrained(str(src), dtype=dtype)
    _check_complete(enc, src)
    size = int(image_size or enc.config.image_size)
    if size % enc.config.patch_size:
        raise ValueError(f"image size {size} is not a multiple of the patch size {enc.config.patch_size}")
    enc.config.image_size = size
    return _write(enc, src, out_dir)


def export_random(model_dir: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """A randomly initialised encoder (the toolkit's initialisation, ``seed``) with the architecture and preprocessing
    of the GenLIP model in ``model_dir``, written like :func:`export_hf`: the untrained baseline of a comparison."""
    src = resolve_weights_dir(model_dir)
    torch.manual_seed(seed)
    enc = GenLIPVisionModel(GenLIPVisionModel.config_class.from_pretrained(str(src)))
    return _write(enc, src, out_dir, random_seed=seed)


def _write(enc: GenLIPVisionModel, src: Path, out_dir: str | Path, random_seed: int | None = None) -> Path:
    """The export directory: config + weights, the image processor's config, and the model card."""
    enc.config.architectures = ["GenLIPVisionModel"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    enc.save_pretrained(str(out))
    image_processor(enc.config).save_pretrained(str(out))
    write_card(out, enc.config, src, "hf", sum(p.numel() for p in enc.parameters()), random_seed)
    return out


def image_processor(config):
    """The preprocessing of training as a SigLIP image processor. Without torchvision (the encoder commands need
    none) its PIL twin, which saves the same file under the same name, instead of the default class that says at
    every start that it falls back to it."""
    # by name, when it is needed: even importing the default class says so without torchvision
    name = "SiglipImageProcessor"
    if not installed("torchvision") and hasattr(transformers, "SiglipImageProcessorPil"):  # recent transformers 5
        name = "SiglipImageProcessorPil"
    cls = getattr(transformers, name)
    return cls(do_resize=True, size={"height": config.image_size, "width": config.image_size}, resample=2,
               do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(config.image_mean),
               image_std=list(config.image_std), do_convert_rgb=True)


def _check_complete(enc, src: Path) -> None:
    """Every encoder tensor must come from the checkpoint (``from_pretrained`` would silently initialise any
    missing one)."""
    names = set()
    for f in sorted(src.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            names |= set(fh.keys())
    want = {k for k in enc.state_dict() if ".rope." not in k}
    missing = sorted(want - names)
    if missing:
        raise KeyError(f"{src} lacks encoder weights {missing[:5]}{' ...' if len(missing) > 5 else ''}")
