"""Image transforms of the two pretraining stages: pure functions on PIL images."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from genlip.image import normalize


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ``(3, H, W)`` float in ``[0, 1]`` (rescale 1/255)."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)


def fixed_resize(img: Image.Image, size: int, mean: list[float], std: list[float]) -> torch.Tensor:
    """Stage 1: resize to ``size x size`` (bilinear, no crop, no augmentation), then ``(x - mean) / std``."""
    return normalize(to_tensor(img.resize((size, size), Image.BILINEAR)), mean, std)


def smart_resize(height: int, width: int, factor: int = 16, min_pixels: int = 4096,
                 max_pixels: int = 262144) -> tuple[int, int]:
    """Stage 2 target size (Qwen2-VL rule): multiples of ``factor`` close to the original aspect ratio with
    ``min_pixels <= h * w <= max_pixels``. With the paper's bounds the patch count stays in ``[16, 1024]``.

    Written here rather than taken from transformers' Qwen2-VL image processor: that rule floors the short side of a
    very elongated image up to one patch and can then end above ``max_pixels`` (3980 x 20 at 64 patches becomes 112);
    here the long side then shrinks too, so ``h * w <= max_pixels`` holds for every aspect ratio (whenever
    ``max_pixels >= factor**2``); a side shorter than one patch is never rounded to zero; otherwise both agree
    (``tests/genlip/test_packing.py``).

    >>> smart_resize(100, 300)
    (96, 304)
    >>> smart_resize(2000, 1000)
    (720, 352)
    >>> smart_resize(20, 30)
    (64, 80)
    """
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
        if h * w > max_pixels:  # the short side was floored up to one patch: the long side gives way
            if h <= w:
                w = max(factor, math.floor(max_pixels / h / factor) * factor)
            else:
                h = max(factor, math.floor(max_pixels / w / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w
