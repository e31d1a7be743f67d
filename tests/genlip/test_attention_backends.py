"""Every attention backend computes the same function (forward and, where supported, gradients)."""

import pytest
import torch

from genlip.attention import build_plan
from genlip.masks import packed_layout

ROWS = [
    [[("image", (2, 3)), ("text", 4)], [("image", (1, 2)), ("text", 3)], [("text", 2)]],
    [[("image", (3, 3)), ("text", 5)]],
]
L = 24


def _qkv(requires_grad=False):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(2, 2, L, 8, generator=g, requires_grad=requires_grad) for _ in range(3)]


def _run(backend, q, k, v):
    return build_plan(packed_layout(ROWS, L), backend)(q, k, v)


def test_segments_dense_forward_and_grad_agree():
    outs, grads = {}, {}
    for backend in ("segments", "dense"):
        q, k, v = _qkv(True)
        out = _run(backend, q, k, v)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs[backend], grads[backend] = out.detach(), [t.grad for t in (q, k, v)]
    torch.testing.assert_close(outs["segments"], outs["dense"], atol=1e-6, rtol=1e-5)
    for a, b in zip(grads["segments"], grads["dense"]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_flex_forward_agrees_on_cpu():
    pytest.importorskip("torch.nn.attention.flex_attention")
    q, k, v = _qkv()
    with torch.no_grad():
        torch.testing.assert_close(_run("flex", q, k, v), _run("segments", q, k, v), atol=1e-5, rtol=1e-5)


def test_flex_backward_on_cpu_is_a_clear_error():
    q, k, v = _qkv(True)
    out = _run("flex", q, k, v)  # forward works (inference without no_grad is fine)
    with pytest.raises(RuntimeError, match="no backward on the CPU"):
        out.sum().backward()


def test_padding_outputs_are_zero_in_every_backend():
    q, k, v = _qkv()
    pad = packed_layout(ROWS, L).sample_ids < 0
    with torch.no_grad():
        for backend in ("segments", "dense", "flex"):
            out = _run(backend, q, k, v)
            assert out.permute(0, 2, 1, 3)[pad].abs().max() == 0, backend


def test_backends_match_a_naive_softmax():
    q, k, v = _qkv()
    lay = packed_layout(ROWS, L)
    out = _run("segments", q, k, v)
    s, i = lay.sample_ids, lay.image_ids
    for b in range(2):
        for t in range(L):
            if s[b, t] < 0:
                continue
            keys = [j for j in range(L) if s[b, j] == s[b, t] and (j <= t or (i[b, t] >= 0 and i[b, j] == i[b, t]))]
            w = (q[b, :, t, None] @ k[b, :, keys].transpose(-1, -2) / 8 ** 0.5).softmax(-1)  # (H, 1, n)
            torch.testing.assert_close(out[b, :, t], (w @ v[b, :, keys]).squeeze(1), atol=1e-5, rtol=1e-5)


def _fixed_layout():
    from genlip.masks import fixed_layout

    return fixed_layout(3, 2, 3, torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] + [0] * 6]), 7)  # 6 image + 7 text


def test_prefix_plan_equals_dense_on_stage1_rows_forward_and_grad():
    """Stage-1 rows (image, text, right padding): the two-call prefix plan is the dense prefix-LM mask exactly."""
    from genlip.attention import PrefixPlan

    lay = _fixed_layout()
    plan = build_plan(lay, "auto")
    assert isinstance(plan, PrefixPlan) and plan.n == 6
    outs, grads = {}, {}
    for backend in ("prefix", "dense"):
        g = torch.Generator().manual_seed(5)
        q, k, v = (torch.randn(3, 2, 13, 8, generator=g, requires_grad=True) for _ in range(3))
        out = build_plan(lay, backend)(q, k, v)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs[backend], grads[backend] = out.detach(), [t.grad for t in (q, k, v)]
    torch.testing.assert_close(outs["prefix"], outs["dense"], atol=1e-6, rtol=1e-5)
    for a, b in zip(grads["prefix"], grads["dense"]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert outs["prefix"].permute(0, 2, 1, 3)[lay.is_pad].abs().max() == 0


def test_prefix_is_only_taken_where_it_is_exact():
    from genlip.attention import PrefixPlan, prefix_length
    from genlip.masks import image_only_layout

    assert prefix_length(image_only_layout(2, 3, 3)) == 9  # the encoder alone: one full-attention call
    assert prefix_length(packed_layout(ROWS, L)) is None  # packed rows: several samples
    lay = _fixed_layout()
    left = type(lay)(lay.sample_ids.roll(2, dims=1), lay.image_ids.roll(2, dims=1), lay.position_ids)
    assert prefix_length(left) is None  # padding elsewhere than at the end
    assert not isinstance(build_plan(packed_layout(ROWS, L), "auto"), PrefixPlan)
    with pytest.raises(ValueError, match="prefix"):
        build_plan(packed_layout(ROWS, L), "prefix")
