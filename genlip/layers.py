"""Building blocks of the GenLIP Transformer: patch embedding, gated attention, SwiGLU, LayerScale, DropPath."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genlip.attention import AttentionPlan
from genlip.config import GenLIPConfig
from genlip.rope import apply_rope


class PatchEmbed(nn.Module):
    """``Conv2d(C, d, P, stride=P)`` with bias, applied to whole images or to pre-patchified patches.

    Whole images ``(B, C, H, W)`` give ``(B, H/P * W/P, d)`` row-major; patches ``(N, C, P, P)`` or ``(N, C*P*P)``
    give ``(N, d)`` through the same weights used as a Linear layer (identical numbers, no conv overhead).
    """

    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.patch_size, self.in_chans = patch_size, in_chans
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Whole images ``(B, C, H, W)`` -> ``(B, H/P * W/P, d)`` (row-major patch order)."""
        P = self.patch_size
        if images.dim() != 4 or images.shape[-2] % P or images.shape[-1] % P:
            raise ValueError(f"expected images (B, {self.in_chans}, H, W) with H and W multiples of {P}, "
                             f"got {tuple(images.shape)}")
        return self.proj(images).flatten(2).transpose(1, 2)

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Pre-patchified ``(N, C, P, P)`` or ``(N, C*P*P)`` -> ``(N, d)``, the conv used as a Linear layer."""
        C, P = self.in_chans, self.patch_size
        if patches.numel() != patches.shape[0] * C * P * P:
            raise ValueError(f"expected patches (N, {C}, {P}, {P}) or (N, {C * P * P}), got {tuple(patches.shape)}")
        w = self.proj.weight.reshape(self.proj.out_channels, C * P * P)
        return F.linear(patches.reshape(patches.shape[0], C * P * P).to(w.dtype), w, self.proj.bias)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size, width // self.patch_size


class GatedAttention(nn.Module):
    """Multi-head attention with the paper's elementwise sigmoid output gate.

    ``q_proj`` maps ``d -> 2d``: the first half is the query, the second the gate logits ``g``. The output is
    ``out_proj(concat_heads(attn(q, k, v)) * sigmoid(g))``; the gate sees no RoPE. With ``gated=False`` it is plain
    attention (for the gate ablation).
    """

    def __init__(self, dim: int, num_heads: int, gated: bool = True) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.gated = num_heads, dim // num_heads, gated
        self.q_proj = nn.Linear(dim, 2 * dim if gated else dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            lin.xavier_init = True  # read by GenLIPPreTrainedModel._init_weights

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], plan: AttentionPlan,
                cache: list | None = None) -> torch.Tensor:
        B, L, D = x.shape
        H, hd = self.num_heads, self.head_dim
        q = self.q_proj(x)
        if self.gated:
            q, gate = q.chunk(2, dim=-1)  # (B, L, D) each
        q = q.view(B, L, H, hd).transpose(1, 2)  # (B, H, L, hd)
        k = self.k_proj(x).view(B, L, H, hd).transpose(1, 2)
        v = self.v_proj(x).view(B, L, H, hd).transpose(1, 2)
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache_update(cache, k, v)
        out = plan(q, k, v).transpose(1, 2).reshape(B, L, D)  # (B, L, D), heads concatenated
        if self.gated:
            out = out * torch.sigmoid(gate)
        return self.out_proj(out)


def cache_update(cache, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Append this step's keys/values to a layer's KV cache and return the whole sequence's.

    ``cache`` is either ``[k, v]`` (a list grown in place: :func:`genlip.generation.generate`) or ``(store, layer)``
    with a transformers ``Cache`` (``GenerationMixin.generate``).
    """
    if isinstance(cache, list):
        if cache:
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
        cache[:] = [k, v]
        return k, v
    store, layer = cache
    return store.update(k, v, layer)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))`` with biases on all three projections."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden)
        self.up_proj = nn.Linear(dim, hidden)
        self.down_proj = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth per packed sample: each sample of a row keeps or drops a residual branch as a whole.

    ``sample_ids`` (``(B, L)``) tells which tokens form one sample; without it whole rows are dropped (timm's rule).
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor, sample_ids: torch.Tensor | None = None) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        B = x.shape[0]
        if sample_ids is None:
            mask = x.new_empty(B, 1, 1).bernoulli_(keep)
        else:  # one draw per possible sample id (a row of L tokens holds at most L samples): no host sync
            per_sample = x.new_empty(B, sample_ids.shape[1]).bernoulli_(keep)
            mask = per_sample.gather(1, sample_ids.clamp(min=0))[..., None]
        return x * mask / keep


class Block(nn.Module):
    """Pre-LN block: ``h += DropPath(LS(Attn(LN(h))))``; ``h += DropPath(LS(FFN(LN(h))))``."""

    def __init__(self, config: GenLIPConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.norm1 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.attn = GatedAttention(d, config.num_attention_heads, config.gated_attention)
        self.norm2 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.mlp = SwiGLU(d, config.intermediate_size)
        use_ls = config.layerscale_init > 0
        self.ls1 = LayerScale(d, config.layerscale_init) if use_ls else nn.Identity()
        self.ls2 = LayerScale(d, config.layerscale_init) if use_ls else nn.Identity()
        self.drop_path = DropPath(config.drop_path_rate)

    def forward(self, h: torch.Tensor, rope, plan: AttentionPlan, sample_ids: torch.Tensor | None = None,
                cache: list | None = None) -> torch.Tensor:
        h = h + self.drop_path(self.ls1(self.attn(self.norm1(h), rope, plan, cache)), sample_ids)
        h = h + self.drop_path(self.ls2(self.mlp(self.norm2(h))), sample_ids)
        return h
