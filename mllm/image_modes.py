"""How many LLM tokens an image becomes under each image mode (pure functions, no model needed).

- ``resize``: one square image of ``S`` px -> ``(S / P)^2`` tokens (the paper's frozen protocol: 384 / 16 -> 576).
- ``anyres``: LLaVA-NeXT. The best grid from ``image_grid_pinpoints`` for the image; the tiles' feature map with
  the padding removed ("unpad"), a newline embedding after each feature row, plus the downsized base image.
- ``native``: the image at its own aspect ratio, smart-resized within a token budget, ``grid_h * grid_w`` tokens.
"""

from __future__ import annotations

from transformers.image_processing_utils import select_best_resolution

from genlip.data.transforms import smart_resize


def resize_num_tokens(image_size: int, patch_size: int) -> int:
    """Tokens of one square image.

    >>> resize_num_tokens(384, 16), resize_num_tokens(336, 14)
    (576, 576)
    """
    return (image_size // patch_size) ** 2


def anyres_grid(orig_h: int, orig_w: int, pinpoints: list[list[int]], tile: int) -> tuple[int, int]:
    """Tiles ``(rows, cols)`` of the best pinpoint resolution for an ``orig_h x orig_w`` image (LLaVA-NeXT rule:
    keep the most effective resolution, then waste the least area).

    >>> anyres_grid(300, 800, [[384, 768], [768, 384], [768, 768]], 384)
    (1, 2)
    """
    h, w = select_best_resolution((orig_h, orig_w), pinpoints)
    return h // tile, w // tile


def anyres_num_tokens(orig_h: int, orig_w: int, pinpoints: list[list[int]], tile: int, patch: int) -> int:
    """Tokens of one image in ``anyres`` mode: unpadded tile features + one newline per feature row + base image.

    >>> anyres_num_tokens(384, 384, [[384, 384], [768, 768]], 384, 16)  # 1x1 tile, nothing to unpad
    1176
    """
    rows, cols = anyres_grid(orig_h, orig_w, pinpoints, tile)
    side = tile // patch
    cur_h, cur_w = rows * side, cols * side
    # unpad: the feature map keeps the original aspect ratio (LLaVA-NeXT's unpad_image, in token units)
    if orig_w / orig_h > cur_w / cur_h:
        new_h = int(round(orig_h * (cur_w / orig_w), 7))
        pad = (cur_h - new_h) // 2
        cur_h = cur_h - 2 * pad
    else:
        new_w = int(round(orig_w * (cur_h / orig_h), 7))
        pad = (cur_w - new_w) // 2
        cur_w = cur_w - 2 * pad
    return cur_h * cur_w + cur_h + side * side


def native_grid(orig_h: int, orig_w: int, patch: int, min_tokens: int, max_tokens: int) -> tuple[int, int]:
    """Patch grid of an image in ``native`` mode (smart resize within ``min_tokens..max_tokens``).

    >>> native_grid(300, 800, 16, 16, 576)
    (14, 39)
    """
    h, w = smart_resize(orig_h, orig_w, patch, min_tokens * patch * patch, max_tokens * patch * patch)
    return h // patch, w // patch


def default_pinpoints(tile: int, max_grid: int = 2) -> list[list[int]]:
    """All grids up to ``max_grid x max_grid`` tiles (the paper's unfrozen protocol: up to 2x2 + base).

    >>> default_pinpoints(384)
    [[384, 768], [768, 384], [768, 768]]
    """
    out = [[r * tile, c * tile] for r in range(1, max_grid + 1) for c in range(1, max_grid + 1) if r * c > 1]
    return sorted(out, key=lambda x: (x[0] * x[1], x[0]))

