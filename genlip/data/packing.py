"""Packing variable-length samples into fixed-length rows (stage 2): pure functions, no model needed.

First-fit decreasing over a window of samples keeps rows full; rows below ``min_fill`` are held back and re-packed
with the next window (at most once, so nothing waits forever).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence

import torch

from genlip.data.transforms import smart_resize
from genlip.loss import IGNORE_INDEX
from genlip.positions import sample_position_ids


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows of at most ``capacity``: longest first, each into the first row it
    fits. Ties keep arrival order, so the result is deterministic.

    >>> first_fit_decreasing([5, 3, 8, 2, 4], 10)
    [[2, 3], [0, 4], [1]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    space: list[int] = []
    for i in order:
        if lengths[i] > capacity:
            raise ValueError(f"a sample of {lengths[i]} tokens does not fit a row of {capacity}")
        for r, free in enumerate(space):
            if lengths[i] <= free:
                rows[r].append(i)
                space[r] -= lengths[i]
                break
        else:
            rows.append([i])
            space.append(capacity - lengths[i])
    return rows


def pad_to_longest_fill(lengths: Sequence[int], batch: int) -> float:
    """Fill ratio of the naive alternative: consecutive batches padded to their longest sample."""
    used = padded = 0
    for s in range(0, len(lengths), batch):
        chunk = lengths[s:s + batch]
        used += sum(chunk)
        padded += max(chunk) * len(chunk)
    return used / max(padded, 1)


def simulate_stage2_lengths(n: int, seed: int = 0, patch: int = 16, min_tokens: int = 16,
                            max_tokens: int = 1024) -> list[int]:
    """Sample lengths of a paper-like stage-2 mix (for benchmarks and tests): web images of log-normal size
    (median ~490 x 400 px) smart-resized to ``min_tokens..max_tokens`` patches, plus prompt, a long caption
    (median ~180 tokens) and EOS; the mean is near the paper's ~1200 tokens per sample."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        w, h = int(rng.lognormvariate(6.2, 0.5)), int(rng.lognormvariate(6.0, 0.5))
        gh, gw = (x // patch for x in smart_resize(max(h, 2), max(w, 2), patch, min_tokens * patch**2,
                                                   max_tokens * patch**2))
        out.append(gh * gw + 7 + int(rng.lognormvariate(5.2, 0.4)) + 2)
    return out


def collate_packed(rows: list[list[dict]], row_len: int, pad_id: int) -> dict:
    """Packed batch: ``input_ids``/``labels``/``sample_ids``/``image_ids`` ``(R, L)``, ``position_ids``
    ``(3, R, L)``, and every image patch of the batch in token order, ``pixel_values`` ``(N, C, P, P)``.

    Each example holds ``patches`` ``(n_img, C, P, P)``, ``grid`` ``(gh, gw)``, ``input_ids`` and ``labels`` of its
    text. Positions restart for every sample; labels are ``-100`` on image tokens, prompt and padding.
    """
    R = len(rows)
    ids = torch.full((R, row_len), pad_id, dtype=torch.long)
    labels = torch.full((R, row_len), IGNORE_INDEX, dtype=torch.long)
    sids = torch.full((R, row_len), -1, dtype=torch.long)
    iids = torch.full((R, row_len), -1, dtype=torch.long)
    pos = torch.zeros(3, R, row_len, dtype=torch.long)
    patches = []
    for r, row in enumerate(rows):
        t = 0
        for k, ex in enumerate(row):
            n_img = ex["patches"].shape[0]
            n_txt = ex["input_ids"].numel()
            end = t + n_img + n_txt
            if end > row_len:
                raise ValueError(f"row {r} overflows: {end} > {row_len}")
            sids[r, t:end] = k
            iids[r, t:t + n_img] = k  # one image per sample: its index in the row is unique
            ids[r, t + n_img:end] = ex["input_ids"]
            labels[r, t + n_img:end] = ex["labels"]
            pos[:, r, t:end] = sample_position_ids([("image", tuple(ex["grid"])), ("text", n_txt)])
            patches.append(ex["patches"])
            t = end
    return {"input_ids": ids, "labels": labels, "sample_ids": sids, "image_ids": iids, "position_ids": pos,
            "pixel_values": torch.cat(patches) if patches else torch.zeros(0)}


def example_length(ex: dict) -> int:
    return int(ex["patches"].shape[0] + ex["input_ids"].numel())


class RowPacker:
    """Window-wise first-fit-decreasing with one retry for under-filled rows.

    Items arrive from an iterator; :meth:`take` returns ``n`` packed rows (lists of items). ``queue`` (packed rows
    not yet taken) and ``carry`` (items held back from under-filled rows) are the packer's whole state.

    >>> p = RowPacker(capacity=10, window=4, min_fill=0.9, length=lambda x: x)
    >>> p.take(iter([6, 4, 5, 5, 9, 1, 3, 3, 2, 2, 7, 3]), 3)
    [[6, 4], [5, 5], [9, 1]]
    """

    def __init__(self, capacity: int, window: int, min_fill: float, length=example_length) -> None:
        self.capacity, self.window, self.min_fill, self.length = capacity, window, min_fill, length
        self.queue: deque = deque()
        self.carry: list = []

    def _pack_window(self, items) -> None:
        window = self.carry + [next(items) for _ in range(self.window)]
        carried = {id(x) for x in self.carry}
        self.carry = []
        for row in first_fit_decreasing([self.length(x) for x in window], self.capacity):
            members = [window[i] for i in row]
            fill = sum(self.length(x) for x in members) / self.capacity
            if fill < self.min_fill and not any(id(x) in carried for x in members):
                self.carry.extend(members)  # re-pack with the next window, once
            else:
                self.queue.append(members)

    def take(self, items, n: int) -> list:
        while len(self.queue) < n:
            self._pack_window(items)
        return [self.queue.popleft() for _ in range(n)]
