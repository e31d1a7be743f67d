"""A deliberately plain PyTorch GenLIP for the peer benchmark: the same architecture and shapes as ours (gated
attention, SwiGLU, LayerScale, pre-LN, interleaved MRoPE, untied LM head), written the way one would write it
first: one dense prefix-LM mask through SDPA, logits for every position then ``cross_entropy(ignore_index)``,
``torch.optim.AdamW`` with its defaults. No per-sample attention, no supervised-only head, no fused optimizer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rope_angles(head_dim: int, sections: list[int], pos: torch.Tensor, theta: float = 10000.0):
    """``pos`` (3, L) -> cos/sin (L, head_dim) for interleaved MRoPE (T on j%3==0, H on 1, W on 2), rotate-half."""
    half = head_dim // 2
    inv = theta ** (-torch.arange(half, dtype=torch.float32, device=pos.device) * 2 / head_dim)
    j = torch.arange(half, device=pos.device)
    axis = torch.zeros(half, dtype=torch.long, device=pos.device)
    axis[(j % 3 == 1) & (j < 3 * sections[1])] = 1
    axis[(j % 3 == 2) & (j < 3 * sections[2])] = 2
    ang = pos[axis].float().t() * inv  # (L, half)
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def rotate(x, cos, sin):
    a, b = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-b, a], dim=-1) * sin


class PlainBlock(nn.Module):
    def __init__(self, d: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.h = heads
        self.n1, self.n2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        self.q, self.k, self.v, self.o = nn.Linear(d, 2 * d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.gate, self.up, self.down = nn.Linear(d, hidden), nn.Linear(d, hidden), nn.Linear(hidden, d)
        self.g1, self.g2 = nn.Parameter(torch.full((d,), 0.1)), nn.Parameter(torch.full((d,), 0.1))

    def forward(self, x, cos, sin, mask):
        B, L, D = x.shape
        y = self.n1(x)
        q, g = self.q(y).chunk(2, dim=-1)
        q = q.view(B, L, self.h, -1).transpose(1, 2)
        k = self.k(y).view(B, L, self.h, -1).transpose(1, 2)
        v = self.v(y).view(B, L, self.h, -1).transpose(1, 2)
        a = F.scaled_dot_product_attention(rotate(q, cos, sin), rotate(k, cos, sin), v, attn_mask=mask)
        x = x + self.g1 * self.o(a.transpose(1, 2).reshape(B, L, D) * torch.sigmoid(g))
        y = self.n2(x)
        return x + self.g2 * self.down(F.silu(self.gate(y)) * self.up(y))


class PlainGenLIP(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        d, P = cfg.hidden_size, cfg.patch_size
        self.cfg = cfg
        self.patch = nn.Conv2d(3, d, P, stride=P)
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.blocks = nn.ModuleList(PlainBlock(d, cfg.num_attention_heads, cfg.intermediate_size)
                                    for _ in range(cfg.num_hidden_layers))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)

    def forward(self, pixels, ids, labels):
        img = self.patch(pixels).flatten(2).transpose(1, 2)
        gh, gw = pixels.shape[-2] // self.cfg.patch_size, pixels.shape[-1] // self.cfg.patch_size
        n_img, T = img.shape[1], ids.shape[1]
        x = torch.cat([img, self.embed(ids)], dim=1)
        dev = pixels.device  # every table on the model's device
        r = torch.arange(gh, device=dev).repeat_interleave(gw)
        c = torch.arange(gw, device=dev).repeat(gh)
        t0 = max(gh, gw)
        txt = torch.arange(t0, t0 + T, device=dev)
        pos = torch.stack([torch.cat([torch.zeros(n_img, dtype=torch.long, device=dev), txt]), torch.cat([r, txt]),
                           torch.cat([c, txt])])
        cos, sin = rope_angles(self.cfg.head_dim, self.cfg.mrope_section, pos, self.cfg.rope_theta)
        L = n_img + T
        mask = torch.ones(L, L, dtype=torch.bool, device=dev).tril()
        mask[:n_img, :n_img] = True
        for blk in self.blocks:
            x = blk(x, cos, sin, mask)
        logits = self.head(self.norm(x))[:, n_img - 1:-1]  # position i predicts text token i
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
