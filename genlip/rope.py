"""Interleaved 3-axis multimodal RoPE, Qwen3-VL channel layout, rotate-half convention."""

from __future__ import annotations

import torch
from torch import nn


def mrope_axis_of_channel(half_dim: int, mrope_section: list[int]) -> torch.Tensor:
    """Which axis (0 = T, 1 = H, 2 = W) drives each of the ``half_dim`` rotary frequencies.

    Channel ``j`` uses H when ``j % 3 == 1 and j < 3 * section[1]``, W when ``j % 3 == 2 and j < 3 * section[2]``,
    T otherwise (the T entry of the section is implied, as in Qwen3-VL and the GenLIP release).

    >>> mrope_axis_of_channel(8, [2, 2, 2]).tolist()
    [0, 1, 2, 0, 1, 2, 0, 0]
    """
    j = torch.arange(half_dim)
    axis = torch.zeros(half_dim, dtype=torch.long)
    axis[(j % 3 == 1) & (j < 3 * mrope_section[1])] = 1
    axis[(j % 3 == 2) & (j < 3 * mrope_section[2])] = 2
    return axis


class MRoPE(nn.Module):
    """Computes ``(cos, sin)`` of shape ``(B, L, head_dim)`` from ``position_ids`` of shape ``(3, B, L)`` in fp32."""

    def __init__(self, head_dim: int, mrope_section: list[int], theta: float = 10000.0) -> None:
        super().__init__()
        half = head_dim // 2
        inv_freq = theta ** (-torch.arange(0, half, dtype=torch.float32) * 2 / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("axis", mrope_axis_of_channel(half, mrope_section), persistent=False)
        self.head_dim, self.mrope_section, self.theta = head_dim, list(mrope_section), theta

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype = torch.float32):
        with torch.autocast(position_ids.device.type, enabled=False):
            # pick, per channel, the position of its axis: (B, L, half)
            pos = position_ids.float().permute(1, 2, 0)[..., self.axis]
            freqs = pos * self.inv_freq
            emb = torch.cat([freqs, freqs], dim=-1)  # (B, L, head_dim)
            return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape ``(B, H, L, D)`` with ``cos``/``sin`` of shape ``(B, L, D)``."""
    cos, sin = cos[:, None], sin[:, None]  # (B, 1, L, D)
    return x * cos + rotate_half(x) * sin
