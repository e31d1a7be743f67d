"""Attention backends behind one switch. Each builds a plan once per layout and is reused by every layer.

- ``segments``: one ``scaled_dot_product_attention`` call per packed sample, each with its own small mask. Exact,
  differentiable, and the fastest CPU path for packed rows (no ``L x L`` mask).
- ``dense``: one SDPA call with the full ``(B, 1, L, L)`` boolean prefix-LM mask. Simple reference path.
- ``flex``: FlexAttention with a block mask built from the same per-token ids. Trains on CUDA; on the CPU PyTorch
  has no FlexAttention backward, so it is forward-only there.
- ``prefix``: for rows that are one sample each, image first, text after it with right padding only (stage 1, the
  encoder alone): two SDPA calls that the flash kernels take, the image block with full attention and the text rows
  over all keys with a lower-right causal mask. No mask tensor, no wasted blocks. ``auto`` picks it for such layouts.

All backends return zeros at padding positions, so they agree everywhere, not only on real tokens.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from genlip.config import ATTN_BACKENDS
from genlip.masks import Layout, prefix_lm_mask, segment_bounds


def resolve_backend(name: str, device: torch.device) -> str:
    """``auto`` means FlexAttention on CUDA and per-sample SDPA elsewhere (for layouts that ``prefix`` cannot take)."""
    if name == "auto":
        return "flex" if device.type == "cuda" else "segments"
    if name not in ATTN_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; use {', '.join(ATTN_BACKENDS)}")
    return name


class AttentionPlan:
    """Callable ``(q, k, v) -> out`` on ``(B, H, L, D)`` tensors for a fixed layout."""

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class MaskPlan(AttentionPlan):
    """SDPA with an explicit boolean mask ``(B, 1, Lq, Lk)`` (or none); used by dense layouts and KV-cache decoding."""

    def __init__(self, mask: torch.Tensor | None, zero_rows: torch.Tensor | None = None) -> None:
        self.mask, self.zero_rows = mask, zero_rows

    def __call__(self, q, k, v):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        if self.zero_rows is not None:
            out = out.masked_fill(self.zero_rows[:, None, :, None], 0.0)
        return out


def dense_plan(layout: Layout) -> MaskPlan:
    pad = layout.is_pad
    mask = prefix_lm_mask(layout.sample_ids, layout.image_ids)
    # a padding query attends only to itself, so softmax has a finite row; its output is zeroed afterwards
    mask = mask | (torch.diag_embed(pad))
    return MaskPlan(mask[:, None], pad if bool(pad.any()) else None)


class SegmentPlan(AttentionPlan):
    """Per-sample SDPA. Rows with identical structure are processed together in one batched call per sample."""

    def __init__(self, layout: Layout) -> None:
        sids, iids = layout.sample_ids, layout.image_ids
        self.L = sids.shape[1]
        uniform = bool((sids == sids[:1]).all() and (iids == iids[:1]).all())
        rows = [0] if uniform else list(range(sids.shape[0]))
        bounds = segment_bounds(sids[rows[0]:rows[0] + 1] if uniform else sids)
        self.uniform = uniform
        self.jobs: list[tuple[int | None, list[tuple[int, int, torch.Tensor | None, bool]]]] = []
        for r, row_bounds in zip(rows, bounds):
            segs = []
            for s, e in row_bounds:
                seg_i = iids[r, s:e]
                is_img = seg_i >= 0
                if bool(is_img.all()) and bool((seg_i == seg_i[0]).all()):
                    segs.append((s, e, None, False))  # one whole image: full attention
                elif not bool(is_img.any()):
                    segs.append((s, e, None, True))  # text only: causal
                else:
                    m = prefix_lm_mask(sids[r:r + 1, s:e], seg_i[None])
                    segs.append((s, e, m[:, None], False))
            self.jobs.append((None if uniform else r, segs))

    def _row(self, q, k, v, segs):
        pieces, cur = [], 0
        B, H, _, D = q.shape
        for s, e, mask, causal in segs:
            if s > cur:
                pieces.append(q.new_zeros(B, H, s - cur, D))
            pieces.append(F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e],
                                                         attn_mask=mask, is_causal=causal))
            cur = e
        if cur < self.L:
            pieces.append(q.new_zeros(B, H, self.L - cur, D))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)

    def __call__(self, q, k, v):
        if self.uniform:
            return self._row(q, k, v, self.jobs[0][1])
        outs = [self._row(q[r:r + 1], k[r:r + 1], v[r:r + 1], segs) for r, segs in self.jobs]
        return torch.cat(outs, dim=0)


class _NoCPUBackward(torch.autograd.Function):
    """Identity whose backward explains why FlexAttention cannot train on the CPU."""

    @staticmethod
    def forward(ctx, out, *inputs):
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("FlexAttention has no backward on the CPU in PyTorch; train with attn_backend='segments' "
                           "(or 'dense') and use 'flex' on the CPU for inference only")


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


class FlexPlan(AttentionPlan):
    """FlexAttention with a block mask built once from the layout's ids (compiled on CUDA, eager on the CPU)."""

    def __init__(self, layout: Layout) -> None:
        sids, iids = layout.sample_ids, layout.image_ids
        mask_mod = self.mask_mod_for(sids, iids)
        B, L = sids.shape
        pad = layout.is_pad
        ordered, has_pad = (t.item() for t in torch.stack([_ordered_layout(sids, iids), pad.any()]).cpu())
        if ordered:  # every layout this project builds: blocks classified from per-block id ranges, O(L) work
            self.block_mask = layout_block_mask(sids, iids, mask_mod)
        else:  # evaluates mask_mod on all B x L x L pairs (and holds them): exact for any ids, slow at 16K tokens
            self.block_mask = create_block_mask(mask_mod, B, None, L, L, device=sids.device)
        self.pad = pad if has_pad else None

    @staticmethod
    def mask_mod_for(sids: torch.Tensor, iids: torch.Tensor):
        """The prefix-LM mask as FlexAttention's ``mask_mod``: same sample, and causal or within one image; a
        padding query attends to itself only."""
        def mask_mod(b, h, q_idx, kv_idx):
            sq, sk = sids[b, q_idx], sids[b, kv_idx]
            iq = iids[b, q_idx]
            same = (sq == sk) & (sq >= 0)
            allow = same & ((q_idx >= kv_idx) | ((iq >= 0) & (iq == iids[b, kv_idx])))
            return allow | ((sq < 0) & (q_idx == kv_idx))
        return mask_mod

    def __call__(self, q, k, v):
        if q.device.type == "cuda":
            out = _compiled_flex()(q, k, v, block_mask=self.block_mask)
        else:
            with warnings.catch_warnings():  # the eager (unfused) path is intended here: CPU inference and tests
                warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
                out = flex_attention(q.detach(), k.detach(), v.detach(), block_mask=self.block_mask)
            if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
                out = _NoCPUBackward.apply(out, q, k, v)  # inference works; backward explains itself
        if self.pad is not None:
            out = out.masked_fill(self.pad[:, None, :, None], 0.0)
        return out


FLEX_BLOCK = 128  # FlexAttention's default block size (queries and keys)


def _ordered_layout(sids: torch.Tensor, iids: torch.Tensor) -> torch.Tensor:
    """Whether :func:`layout_block_mask` applies (a 0-d bool tensor, no host sync): along each row the real tokens'
    sample ids never decrease, the image tokens' image ids never decrease, and each image id lies in one sample."""
    def never_decreases(x, keep):
        prev = torch.where(keep, x, torch.iinfo(x.dtype).min).cummax(dim=1).values
        return ((x[:, 1:] >= prev[:, :-1]) | ~keep[:, 1:]).all()

    img = iids >= 0
    # the sample id of the latest image token so far, against each image token's own: equal within one image id
    last = torch.where(img, torch.arange(sids.shape[1], device=sids.device), -1).cummax(dim=1).values
    prev_img = torch.cat([last.new_full((sids.shape[0], 1), -1), last[:, :-1]], dim=1)
    prev_s = sids.gather(1, prev_img.clamp(min=0))
    prev_i = iids.gather(1, prev_img.clamp(min=0))
    one_sample = (~img | (prev_img < 0) | (prev_i != iids) | (prev_s == sids)).all()
    return never_decreases(sids, sids >= 0) & never_decreases(iids, img) & one_sample & (~img | (sids >= 0)).all()


def layout_block_mask(sids: torch.Tensor, iids: torch.Tensor, mask_mod, block: int = FLEX_BLOCK):
    """FlexAttention's ``BlockMask`` for the prefix-LM mask of ``(B, L)`` sample / image ids, built from each
    block's id ranges instead of evaluating ``mask_mod`` on every query-key pair (``create_block_mask`` holds
    ``B x L x L`` values; at a 16K-token row that is 268M per row and seconds on a CPU).

    Needs :func:`_ordered_layout`. Then a key block before the query block has an allowed pair iff the two share a
    sample (sample ids never decrease, so two blocks share one iff their id ranges overlap) and all pairs are allowed
    iff both blocks are one sample without padding; a key block after it iff they share an image (an image query
    sees its whole image), all iff both are one image; the diagonal block always has one (each token sees itself)
    and all iff it is one image. The classification is exact, so the mask equals ``create_block_mask``'s (tested).
    """
    B, L = sids.shape
    nb = -(-L // block)
    grow = nb * block - L  # the last block's positions past L count as padding (FlexAttention masks them anyway)
    s = torch.nn.functional.pad(sids, (0, grow), value=-1).view(B, nb, block)
    i = torch.nn.functional.pad(iids, (0, grow), value=-1).view(B, nb, block)
    big = torch.iinfo(s.dtype).max

    def ranges(x):
        keep = x >= 0
        lo, hi = torch.where(keep, x, big).amin(-1), torch.where(keep, x, -1).amax(-1)
        return lo, hi, keep.any(-1), keep.all(-1) & (lo == hi)  # (B, nb) each: min, max, any, all one value

    s_lo, s_hi, s_any, s_one = ranges(s)
    i_lo, i_hi, i_any, i_one = ranges(i)

    def pairs(lo, hi, anyv, one):  # (B, nq, nk): ranges overlap; both blocks are the same single value
        a, b = (slice(None), slice(None), None), (slice(None), None, slice(None))  # query blocks, key blocks
        overlap = anyv[a] & anyv[b] & (lo[a] <= hi[b]) & (lo[b] <= hi[a])
        return overlap, one[a] & one[b] & (lo[a] == lo[b])

    s_overlap, s_same = pairs(s_lo, s_hi, s_any, s_one)
    i_overlap, i_same = pairs(i_lo, i_hi, i_any, i_one)
    q_idx = torch.arange(nb, device=sids.device)
    below = q_idx[None, :, None] > q_idx[None, None, :]  # key block before the query block
    diag = q_idx[None, :, None] == q_idx[None, None, :]
    nonempty = torch.where(below, s_overlap, i_overlap) | diag
    full = torch.where(below, s_same, i_same)  # on the diagonal: one image (i_same of a block with itself)
    partial = nonempty & ~full

    def as_kv(blocks):  # (B, 1, nq) counts and (B, 1, nq, nk) indices, the listed blocks first
        order = torch.argsort(blocks.to(torch.int8), dim=-1, descending=True, stable=True)
        return blocks.sum(-1, dtype=torch.int32)[:, None], order.to(torch.int32)[:, None]

    return BlockMask.from_kv_blocks(*as_kv(partial), *as_kv(full), BLOCK_SIZE=block, mask_mod=mask_mod,
                                    seq_lengths=(L, L))


def prefix_length(layout: Layout) -> int | None:
    """The number of image tokens when every row is one sample laid out as ``[image][text][padding]`` with the same
    image length in every row (what :class:`PrefixPlan` computes exactly), else ``None``. One host sync."""
    sids, iids = layout.sample_ids, layout.image_ids
    if sids.shape[1] == 0:
        return None
    n = int((iids[0] >= 0).sum())
    img, txt = iids[:, :n], iids[:, n:]
    valid = sids[:, n:] == 0
    ok = ((img == 0).all() & (sids[:, :n] == 0).all() & (txt < 0).all() & (valid | (sids[:, n:] == -1)).all()
          & (valid[:, 1:] <= valid[:, :-1]).all())
    return n if bool(ok) else None


class PrefixPlan(AttentionPlan):
    """Image queries attend to their image (full); text queries to the image and causally to earlier text, as a
    lower-right causal mask over all keys. Right padding is never attended by a real token (it comes after every
    one); its own rows are zeroed."""

    def __init__(self, n_image: int, length: int, pad: torch.Tensor | None) -> None:
        self.n, self.pad = n_image, pad
        # built here, not in __call__: torch.compile takes a ready bias (creating one inside is a graph break)
        self.text_bias = causal_lower_right(length - n_image, length) if length > n_image else None

    def __call__(self, q, k, v):
        # an attention bias takes SDPA's arguments as given, before autocast would unify them (rotated q and k are
        # fp32, v is bf16 under autocast): the half precision of v is what autocast would pick
        q, k = q.to(v.dtype), k.to(v.dtype)
        n = self.n
        parts = []
        if n:
            parts.append(F.scaled_dot_product_attention(q[:, :, :n], k[:, :, :n], v[:, :, :n]))
        if self.text_bias is not None:
            parts.append(F.scaled_dot_product_attention(q[:, :, n:], k, v, attn_mask=self.text_bias))
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        if self.pad is not None:
            out = out.masked_fill(self.pad[:, None, :, None], 0.0)
        return out


def build_plan(layout: Layout, backend: str) -> AttentionPlan:
    """Build the attention plan for ``layout`` with a backend name (``auto`` takes ``prefix`` where it applies)."""
    if backend in ("auto", "prefix"):
        n = prefix_length(layout)
        if n is not None:
            pad = layout.is_pad
            return PrefixPlan(n, pad.shape[1], pad if bool(pad.any()) else None)
        if backend == "prefix":
            raise ValueError("attn_backend='prefix' needs rows of one sample each, [image][text][right padding]; "
                             "use auto for packed rows")
    backend = resolve_backend(backend, layout.sample_ids.device)
    if backend == "dense":
        return dense_plan(layout)
    if backend == "flex":
        return FlexPlan(layout)
    return SegmentPlan(layout)
