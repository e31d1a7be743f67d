"""Next-token cross-entropy over supervised text tokens only.

The LM head runs only on positions whose next token is supervised (image tokens and the prompt never reach it).
``chunked`` never materialises the full ``[tokens, vocab]`` logits: it computes the loss chunk by chunk and
recomputes each chunk's logits in the backward pass, so peak memory is ``chunk_size x vocab``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def shift_labels(labels: torch.Tensor, sample_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Targets aligned with the positions that predict them: ``targets[t] = labels[t + 1]`` within one sample.

    A position whose next token belongs to another packed sample (or padding) gets ``-100``, so nothing is
    predicted across sample boundaries.

    >>> shift_labels(torch.tensor([[-100, 5, 6, 7, 8]]), torch.tensor([[0, 0, 0, 1, 1]])).tolist()
    [[5, 6, -100, 8, -100]]
    """
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    if sample_ids is not None:
        cross = sample_ids[:, 1:] != sample_ids[:, :-1]
        targets[:, :-1] = targets[:, :-1].masked_fill(cross | (sample_ids[:, 1:] < 0), IGNORE_INDEX)
    return targets


def _matmul_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype autocast runs matmuls in here (its dtype when enabled on ``t``'s device, else ``t``'s own)."""
    dev = t.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else t.dtype


def _lse_and_target(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: log-sum-exp of ``logits`` in fp32, and the logit of the target ``y``."""
    x = logits.float()
    return torch.logsumexp(x, dim=-1), x.gather(1, y[:, None]).squeeze(1)


def _softmax_grad(logits: torch.Tensor, lse: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``(softmax(logits) - onehot(y)) * g`` in ``logits``' dtype, the softmax in fp32 from ``lse``."""
    p = torch.exp(logits.float() - lse[:, None])
    col = torch.arange(logits.shape[1], device=logits.device)
    return (torch.where(col[None, :] == y[:, None], p - 1.0, p) * g).to(logits.dtype)


# On CUDA the chunked loss's elementwise work over each [chunk, vocab] block runs as two compiled functions that read
# the bf16 logits (the log-sum-exp with the target's logit; the softmax gradient, written in bf16 for the backward
# GEMMs), instead of ~10 eager passes over fp32 copies (at vocab 151,936 one pass over a 1024-row chunk
# reads and writes ~1.2 GB). None: fused on CUDA, the eager code on the CPU; True / False: fused / eager everywhere
# (to measure or debug either). The environment sets it: GENLIP_FUSED_CE=0 (or 1); TORCHDYNAMO_DISABLE=1 runs the two
# functions uncompiled, and model.compile with them. A chunk of one row runs the eager code (a size of 1 would
# compile both functions again).
_FUSED_CE_ENV = os.environ.get("GENLIP_FUSED_CE", "")
FUSED_CE: bool | None = {"0": False, "1": True}.get(_FUSED_CE_ENV)


def environment_problem() -> str | None:
    """What is wrong with ``GENLIP_FUSED_CE`` (a value other than 0 or 1), else None: the training commands refuse
    to start on it (one line, exit code 2) and the chunked loss raises it, so a typo is never taken for unset."""
    if _FUSED_CE_ENV in ("", "0", "1"):
        return None
    return f"GENLIP_FUSED_CE must be 0 or 1 (unset: compiled on CUDA), not {_FUSED_CE_ENV!r}"


def fuses(device: torch.device) -> bool:
    """Whether the chunked loss runs its compiled functions on ``device`` (``FUSED_CE``; unset: on CUDA)."""
    return device.type == "cuda" if FUSED_CE is None else FUSED_CE


_FUSED: dict = {}


def _fused(fn):
    """``fn`` compiled (on first use: importing the compiler costs ~1 s, which the CPU path never pays); a failure to
    build its kernels says how to run without them."""
    if fn not in _FUSED:
        compiled = torch.compile(fn, dynamic=True)
        failed = torch._dynamo.exc.BackendCompilerFailed  # loaded by torch.compile

        def run(*args):
            try:
                return compiled(*args)
            except failed as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise RuntimeError(f"the chunked loss's compiled kernels failed to build ({first}); "
                                   "GENLIP_FUSED_CE=0 runs its eager code") from e
        _FUSED[fn] = run
    return _FUSED[fn]


class _ChunkedLinearCE(torch.autograd.Function):
    """Sum of cross-entropies of ``h @ w.T`` against ``y``, computed (and differentiated) in row chunks.

    The GEMMs run in the dtype autocast gives matmuls in the forward (bf16 under bf16 autocast), in the backward
    too: autograd runs backward outside autocast, which used to leave the three backward GEMMs per chunk in fp32
    (TF32 on CUDA, half the bf16 rate). Softmax, log-sum-exp and the weight gradient's accumulation stay fp32.
    Without autocast everything is in the inputs' dtype, as before.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, chunk: int, fused: bool) -> torch.Tensor:
        cdt = _matmul_dtype(h)
        wc = w.to(cdt)
        lse = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], chunk):
            logits = h[s:s + chunk].to(cdt) @ wc.t()  # (c, V)
            lse_and_target = _fused(_lse_and_target) if fused and logits.shape[0] > 1 else _lse_and_target
            lse[s:s + chunk], target = lse_and_target(logits, y[s:s + chunk])
            total += (lse[s:s + chunk] - target).sum()
        ctx.save_for_backward(h, w, y, lse)
        ctx.chunk, ctx.cdt, ctx.fused = chunk, cdt, fused
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        h, w, y, lse = ctx.saved_tensors
        cdt = ctx.cdt
        wc = w.to(cdt)
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if ctx.needs_input_grad[1] else None
        for s in range(0, h.shape[0], ctx.chunk):
            hc = h[s:s + ctx.chunk].to(cdt)
            if ctx.fused and hc.shape[0] > 1:
                pc = _fused(_softmax_grad)(hc @ wc.t(), lse[s:s + ctx.chunk], y[s:s + ctx.chunk], grad_out)
            else:
                p = torch.exp((hc @ wc.t()).float() - lse[s:s + ctx.chunk, None])  # softmax, (c, V)
                p[torch.arange(hc.shape[0], device=h.device), y[s:s + ctx.chunk]] -= 1.0
                p *= grad_out
                pc = p.to(cdt)
            if grad_h is not None:
                grad_h[s:s + ctx.chunk] = (pc @ wc).to(h.dtype)
            if grad_w is not None:
                grad_w += pc.t() @ hc  # accumulated in fp32 (in place: no fp32 copy of the product)
        return grad_h, None if grad_w is None else grad_w.to(w.dtype), None, None, None


def supervised_ce(h: torch.Tensor, lm_head_weight: torch.Tensor, y: torch.Tensor, impl: str = "plain",
                  chunk_size: int = 1024, fused: bool | None = None) -> torch.Tensor:
    """Summed cross-entropy of ``lm_head(h)`` for gathered supervised rows ``h`` ``(M, d)`` and targets ``y``.
    ``fused`` (chunked only): the compiled elementwise kernels; ``None``: as ``FUSED_CE`` says."""
    if h.shape[0] == 0:
        return h.sum() * 0.0 + lm_head_weight.sum() * 0.0
    if impl == "plain":
        return F.cross_entropy((h @ lm_head_weight.t()).float(), y, reduction="sum")
    if impl == "chunked":
        if (problem := environment_problem()) is not None:
            raise ValueError(problem)
        return _ChunkedLinearCE.apply(h, lm_head_weight, y, chunk_size, fuses(h.device) if fused is None else fused)
    raise ValueError(f"unknown loss implementation {impl!r}; use 'plain' or 'chunked'")


def gather_supervised(hidden: torch.Tensor, labels: torch.Tensor, sample_ids: torch.Tensor | None = None):
    """Rows of ``hidden`` ``(B, L, d)`` that predict a supervised token, and those tokens: ``(M, d)``, ``(M,)``."""
    targets = shift_labels(labels, sample_ids)
    sel = targets != IGNORE_INDEX
    return hidden[sel], targets[sel]


def count_supervised(labels: torch.Tensor, sample_ids: torch.Tensor | None = None, image_prefix: bool = True) -> int:
    """Number of supervised next-token targets in a batch, as the model's loss counts them.

    Fixed format (``sample_ids`` is None): ``labels`` cover the text that follows the image tokens, so every
    non-ignored label is a target (the first one is predicted by the last image token). Packed format: labels cover
    whole rows and targets never cross samples.
    """
    if sample_ids is None:
        n = int((labels != IGNORE_INDEX).sum())
        return n if image_prefix else int((labels[:, 1:] != IGNORE_INDEX).sum())
    return int((shift_labels(labels, sample_ids) != IGNORE_INDEX).sum())
