"""3-axis (t, h, w) position ids for GenLIP sequences: pure functions, no model needed.

Rule (Qwen2-VL style): a running offset ``p`` starts at 0 for every sample. An image of ``gh x gw`` patches
gets ``(p, p + r, p + c)`` for the patch at row ``r``, column ``c`` (row-major, the patch flattening order); a text
token gets ``(p, p, p)``. After an image ``p`` jumps past its largest index; after a text token it grows by one.
For the standard sample ``[image] + text`` this gives image ``(0, r, c)`` and text starting at ``max(gh, gw)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# A sample is a list of segments: ("image", (grid_h, grid_w)) or ("text", n_tokens).
Segment = tuple[str, "tuple[int, int] | int"]


def image_position_ids(grid_h: int, grid_w: int, offset: int = 0) -> torch.Tensor:
    """Positions of one image's patches, shape ``(3, grid_h * grid_w)``.

    >>> image_position_ids(2, 3).tolist()
    [[0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2]]
    """
    rows = torch.arange(grid_h).repeat_interleave(grid_w)
    cols = torch.arange(grid_w).repeat(grid_h)
    t = torch.zeros_like(rows)
    return torch.stack([t, rows, cols]) + offset


def sample_position_ids(segments: Sequence[Segment]) -> torch.Tensor:
    """Positions of one sample, shape ``(3, n_tokens)``; positions restart at 0 for every sample.

    A 2x3 image followed by 3 text tokens: text starts at ``max(2, 3) = 3``.

    >>> sample_position_ids([("image", (2, 3)), ("text", 3)]).tolist()
    [[0, 0, 0, 0, 0, 0, 3, 4, 5], [0, 0, 0, 1, 1, 1, 3, 4, 5], [0, 1, 2, 0, 1, 2, 3, 4, 5]]
    """
    parts, p = [], 0
    for kind, value in segments:
        if kind == "image":
            gh, gw = value  # type: ignore[misc]
            parts.append(image_position_ids(gh, gw, p))
            p += max(gh, gw)
        elif kind == "text":
            n = int(value)  # type: ignore[arg-type]
            parts.append(torch.arange(p, p + n).expand(3, n))
            p += n
        else:
            raise ValueError(f"unknown segment kind {kind!r}; expected 'image' or 'text'")
    if not parts:
        return torch.zeros(3, 0, dtype=torch.long)
    return torch.cat(parts, dim=1)


def packed_position_ids(samples: Sequence[Sequence[Segment]], row_len: int) -> torch.Tensor:
    """Positions of a packed row of samples padded to ``row_len``, shape ``(3, row_len)``; padding gets 0.

    >>> packed_position_ids([[("image", (1, 2)), ("text", 2)], [("text", 2)]], 7).tolist()[2]  # the W axis
    [0, 1, 2, 3, 0, 1, 0]
    """
    parts = [sample_position_ids(s) for s in samples]
    used = sum(p.shape[1] for p in parts)
    if used > row_len:
        raise ValueError(f"samples need {used} tokens but the row holds {row_len}")
    parts.append(torch.zeros(3, row_len - used, dtype=torch.long))
    return torch.cat(parts, dim=1)


def text_start_position(grid_h: int, grid_w: int) -> int:
    """Position of the first text token after a ``grid_h x grid_w`` image (used by incremental decoding)."""
    return max(grid_h, grid_w)
