"""Pixel-level helpers shared by training and inference: normalisation and patchification (pure functions)."""

from __future__ import annotations

import torch


def patchify(image: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split ``(C, H, W)`` into row-major patches ``(H/P * W/P, C, P, P)`` and return them with the grid ``(H/P, W/P)``.

    The order matches the conv patch embedding's flattening, so ``embed_patches(patchify(x))`` equals
    ``patch_embed(x[None])[0]``.

    >>> p, grid = patchify(torch.arange(2 * 4 * 6.).reshape(2, 4, 6), 2)
    >>> p.shape, grid, p[1, 0].tolist()
    (torch.Size([6, 2, 2, 2]), (2, 3), [[2.0, 3.0], [8.0, 9.0]])
    """
    C, H, W = image.shape
    P = patch_size
    if H % P or W % P:
        raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {P}")
    gh, gw = H // P, W // P
    patches = image.reshape(C, gh, P, gw, P).permute(1, 3, 0, 2, 4)  # (gh, gw, C, P, P)
    return patches.reshape(gh * gw, C, P, P), (gh, gw)


def normalize(pixels: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel for a ``(..., C, H, W)`` tensor already scaled to ``[0, 1]``."""
    m = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device)[:, None, None]
    s = torch.tensor(std, dtype=pixels.dtype, device=pixels.device)[:, None, None]
    return (pixels - m) / s
