"""Sequence layouts and the exact prefix-LM attention mask: pure functions, no model needed.

A batch is ``B`` rows of ``L`` tokens. Each token carries
- ``sample_ids``: index of its sample within the row, ``-1`` for padding;
- ``image_ids``: index of its image within the row (unique per row), ``-1`` for text and padding;
- ``position_ids``: ``(3, B, L)`` MRoPE positions (see :mod:`genlip.positions`).

The mask (query ``q``, key ``k``)::

    allow = same_sample and (q >= k or (is_image[q] and image[q] == image[k]))

so image tokens see their whole image, text is causal over everything earlier in its sample, image never sees the
text after it, nothing crosses samples, and padding attends to nothing and is attended by nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from genlip.positions import Segment, packed_position_ids, sample_position_ids, text_start_position


@dataclass
class Layout:
    """Per-token metadata of a batch of rows (all ``(B, L)`` except ``position_ids``: ``(3, B, L)``)."""

    sample_ids: torch.Tensor
    image_ids: torch.Tensor
    position_ids: torch.Tensor

    @property
    def is_image(self) -> torch.Tensor:
        return self.image_ids >= 0

    @property
    def is_pad(self) -> torch.Tensor:
        return self.sample_ids < 0

    def to(self, device: torch.device | str) -> Layout:
        return Layout(self.sample_ids.to(device), self.image_ids.to(device), self.position_ids.to(device))


def prefix_lm_mask(sample_ids: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
    """Boolean ``(B, L, L)`` mask, ``True`` where query ``q`` (dim 1) may attend to key ``k`` (dim 2).

    One sample of a 2-token image then 2 text tokens, then one padding token:

    >>> m = prefix_lm_mask(torch.tensor([[0, 0, 0, 0, -1]]), torch.tensor([[0, 0, -1, -1, -1]]))
    >>> m[0].int().tolist()
    [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [0, 0, 0, 0, 0]]
    """
    L = sample_ids.shape[-1]
    idx = torch.arange(L, device=sample_ids.device)
    causal = idx[:, None] >= idx[None, :]  # (L, L)
    valid = sample_ids >= 0
    same_sample = (sample_ids[:, :, None] == sample_ids[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    is_img_q = (image_ids >= 0)[:, :, None]
    same_image = image_ids[:, :, None] == image_ids[:, None, :]
    return same_sample & (causal[None] | (is_img_q & same_image))


def sample_layout(segments: Sequence[Segment], sample_index: int = 0, image_offset: int = 0):
    """Per-token ``(sample_ids, image_ids, position_ids)`` of one sample.

    >>> s, i, p = sample_layout([("image", (1, 2)), ("text", 2)])
    >>> s.tolist(), i.tolist()
    ([0, 0, 0, 0], [0, 0, -1, -1])
    """
    image_parts, next_image = [], image_offset
    for kind, value in segments:
        if kind == "image":
            gh, gw = value  # type: ignore[misc]
            image_parts.append(torch.full((gh * gw,), next_image, dtype=torch.long))
            next_image += 1
        else:
            image_parts.append(torch.full((int(value),), -1, dtype=torch.long))  # type: ignore[arg-type]
    image_ids = torch.cat(image_parts) if image_parts else torch.zeros(0, dtype=torch.long)
    sample_ids = torch.full_like(image_ids, sample_index)
    return sample_ids, image_ids, sample_position_ids(segments)


def packed_layout(rows: Sequence[Sequence[Sequence[Segment]]], row_len: int) -> Layout:
    """Layout of ``B`` packed rows, each a list of samples (each a list of segments), right-padded to ``row_len``.

    >>> lay = packed_layout([[[("image", (1, 2)), ("text", 1)], [("text", 2)]]], 6)
    >>> lay.sample_ids.tolist(), lay.image_ids.tolist()
    ([[0, 0, 0, 1, 1, -1]], [[0, 0, -1, -1, -1, -1]])
    """
    sids, iids = [], []
    for row in rows:
        s_parts, i_parts, n_images = [], [], 0
        for k, sample in enumerate(row):
            s, i, _ = sample_layout(sample, k, n_images)
            n_images += sum(1 for kind, _ in sample if kind == "image")
            s_parts.append(s)
            i_parts.append(i)
        used = sum(len(s) for s in s_parts)
        if used > row_len:
            raise ValueError(f"a row needs {used} tokens but row_len is {row_len}")
        s_parts.append(torch.full((row_len - used,), -1, dtype=torch.long))
        i_parts.append(torch.full((row_len - used,), -1, dtype=torch.long))
        sids.append(torch.cat(s_parts))
        iids.append(torch.cat(i_parts))
    pos = torch.stack([packed_position_ids(row, row_len) for row in rows], dim=1)
    return Layout(torch.stack(sids), torch.stack(iids), pos)


def fixed_layout(batch: int, grid_h: int, grid_w: int, text_mask: torch.Tensor | None, n_text: int) -> Layout:
    """Layout of the stage-1 format: one sample per row, ``grid_h*grid_w`` image tokens then ``n_text`` text tokens.

    ``text_mask`` (``(B, n_text)``, 1 = real token) marks the padding of the text (right padding in training, left
    padding of prompts in generation); ``None`` means no padding. Text positions count real tokens only, so a padded
    row is computed exactly as the same text alone.

    >>> lay = fixed_layout(1, 1, 2, torch.tensor([[1, 1, 0]]), 3)
    >>> lay.sample_ids.tolist(), lay.image_ids.tolist(), lay.position_ids[:, 0].tolist()
    ([[0, 0, 0, 0, -1]], [[0, 0, -1, -1, -1]], [[0, 0, 2, 3, 3], [0, 0, 2, 3, 3], [0, 1, 2, 3, 3]])
    """
    n_img = grid_h * grid_w
    device = text_mask.device if text_mask is not None else None
    valid_text = (torch.ones(batch, n_text, dtype=torch.bool, device=device) if text_mask is None
                  else text_mask.bool())
    sample_ids = torch.cat([torch.zeros(batch, n_img, dtype=torch.long, device=device),
                            torch.where(valid_text, 0, -1)], dim=1)
    image_ids = torch.cat([torch.zeros(batch, n_img, dtype=torch.long, device=device),
                           torch.full((batch, n_text), -1, dtype=torch.long, device=device)], dim=1)
    img_pos = sample_position_ids([("image", (grid_h, grid_w))]).to(device)
    text_pos = text_start_position(grid_h, grid_w) + (valid_text.long().cumsum(-1) - 1).clamp(min=0)
    pos = torch.cat([img_pos[:, None, :].expand(3, batch, -1), text_pos[None].expand(3, -1, -1)], dim=2)
    return Layout(sample_ids, image_ids, pos)


def image_only_layout(batch: int, grid_h: int, grid_w: int, device: torch.device | str | None = None) -> Layout:
    """Layout of the encoder use: image tokens only, so the mask is full attention."""
    n = grid_h * grid_w
    zeros = torch.zeros(batch, n, dtype=torch.long, device=device)
    pos = sample_position_ids([("image", (grid_h, grid_w))]).to(device)
    return Layout(zeros, zeros.clone(), pos[:, None, :].expand(3, batch, -1))


def segment_bounds(sample_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per row, the ``(start, end)`` token ranges of its samples (padding excluded). Samples must be contiguous.

    >>> segment_bounds(torch.tensor([[0, 0, 1, 1, 1, -1], [0, 0, 0, 0, 0, 0]]))
    [[(0, 2), (2, 5)], [(0, 6)]]
    """
    out = []
    for row in sample_ids.tolist():
        bounds: list[tuple[int, int]] = []
        start, cur, seen = 0, None, set()
        for t, s in enumerate(row + [-2]):
            if s != cur:
                if cur is not None and cur >= 0:
                    if cur in seen:
                        raise ValueError(f"sample {cur} is not contiguous in its row; pack samples contiguously")
                    seen.add(cur)
                    bounds.append((start, t))
                start, cur = t, s
        out.append(bounds)
    return out
