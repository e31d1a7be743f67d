"""What the encoder tools share: loading a GenLIP checkpoint with its tokenizer, finding images (files, folders,
WebDataset shards) with counted skips, and turning an image into the model's input at a fixed size or natively."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoTokenizer

from genlip.config import GenLIPConfig
from genlip.data.decode import IMAGE_EXTS, SkipSample, SkipStats, decode_image
from genlip.data.sources import read_wds_shard
from genlip.data.transforms import fixed_resize, smart_resize, to_tensor
from genlip.image import normalize
from genlip.modeling import GenLIPForCaptioning
from genlip.run.checkpoint import resolve_weights_dir

SUFFIXES = {"." + e for e in IMAGE_EXTS}


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_captioner(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
    """A :class:`GenLIPForCaptioning` and its tokenizer from a checkpoint or run directory (newest checkpoint)."""
    d = resolve_weights_dir(path)
    arch = GenLIPConfig.from_pretrained(str(d)).architectures or []
    if arch and "GenLIPForCaptioning" not in arch:
        raise ValueError(f"{d} holds a {arch[0]}, which has no LM head; captions, readout and the sink analysis need "
                         f"a GenLIP captioning checkpoint (genlip-pretrain with model.objective=generative)")
    model = GenLIPForCaptioning.from_pretrained(str(d), dtype=dtype or torch.float32).to(device).eval()
    if not (d / "tokenizer_config.json").exists() and not (d / "tokenizer.json").exists():
        raise FileNotFoundError(f"{d} has no tokenizer files; GenLIP checkpoints written by genlip-pretrain have them")
    tok = AutoTokenizer.from_pretrained(str(d))
    return model, tok, d


def iter_images(inputs: list[str], stats: SkipStats) -> Iterator[tuple[str, Image.Image]]:
    """``(name, RGB image)`` for every image in the given files, folders (recursive, sorted) and ``.tar`` shards.
    Unreadable images are counted in ``stats`` by reason and skipped; a path that does not exist is an error."""
    for inp in inputs:
        p = Path(inp)
        if not p.exists():
            raise FileNotFoundError(f"no such file or folder: {inp}")
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
            if not files:
                print(f"warning: no images in {p}", file=sys.stderr)
        elif p.suffix == ".tar":
            for key, rec in read_wds_shard(str(p), lambda reason, where: stats.skip(reason, where)):
                stats.seen += 1  # every record, skipped or not
                try:
                    img = decode_image(rec.get("image"))
                except SkipSample as e:
                    stats.skip(e.reason, f"{p}::{key}")
                    continue
                yield f"{p}::{key}", img
            continue
        else:
            files = [p]
        for f in files:
            stats.seen += 1
            try:
                img = decode_image(f.read_bytes())
            except SkipSample as e:
                stats.skip(e.reason, str(f))
                continue
            yield str(f), img


def image_input(img: Image.Image, config, size: int | None, min_pixels: int = 4096,
                max_pixels: int = 262144) -> torch.Tensor:
    """``(3, H, W)`` normalised: ``size x size`` (stage 1's transform) or, with ``size=None``, the native aspect
    ratio through stage 2's smart resize (multiples of the patch size)."""
    if size is not None:
        if size % config.patch_size:
            raise ValueError(f"--size {size} is not a multiple of the patch size {config.patch_size}")
        return fixed_resize(img, size, config.image_mean, config.image_std)
    h, w = smart_resize(img.height, img.width, config.patch_size, min_pixels, max_pixels)
    return normalize(to_tensor(img.resize((w, h), Image.BILINEAR)), config.image_mean, config.image_std)
