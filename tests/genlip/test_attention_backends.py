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


def _blocks(bm) -> tuple[torch.Tensor, torch.Tensor]:
    """A BlockMask's partial and full blocks as ``(B, nq, nk)`` booleans."""
    out = []
    for num, idx in ((bm.kv_num_blocks, bm.kv_indices), (bm.full_kv_num_blocks, bm.full_kv_indices)):
        dense = torch.zeros(idx.shape[0], idx.shape[2], idx.shape[3], dtype=torch.bool)
        for b in range(idx.shape[0]):
            for q in range(idx.shape[2]):
                dense[b, q, idx[b, 0, q, :num[b, 0, q]].long()] = True
        out.append(dense)
    return out[0], out[1]


def _random_rows(rng, n_rows, row_len):
    rows = []
    for _ in range(n_rows):
        row, used = [], 0
        while True:  # samples of image/text segments in any order (text-only ones too), then right padding
            sample = [("image", (rng.randint(1, 4), rng.randint(1, 5))) if rng.random() < 0.6 else
                      ("text", rng.randint(1, 12)) for _ in range(rng.randint(1, 3))]
            n = sum(v[0] * v[1] if k == "image" else v for k, v in sample)
            if used + n > row_len - rng.randint(0, 6):
                break
            row.append(sample)
            used += n
        rows.append(row)
    return rows


@pytest.mark.parametrize("seed", range(6))
def test_block_mask_from_id_ranges_equals_create_block_mask(seed):
    """The block mask classified from per-block id ranges (no L x L evaluation) has exactly the partial and full
    blocks that create_block_mask finds by evaluating the mask on every pair: packed rows of several images and
    text pieces per sample, text-only samples, padding, lengths that are not a multiple of the block."""
    import random

    from torch.nn.attention.flex_attention import create_block_mask

    from genlip.attention import FlexPlan, _ordered_layout, layout_block_mask

    rng = random.Random(seed)
    block, row_len = rng.choice([(4, 61), (8, 64), (8, 101), (16, 150)])
    lay = packed_layout(_random_rows(rng, 3, row_len), row_len)
    sids, iids = lay.sample_ids, lay.image_ids
    assert bool(_ordered_layout(sids, iids))
    mask_mod = FlexPlan.mask_mod_for(sids, iids)
    ours = _blocks(layout_block_mask(sids, iids, mask_mod, block))
    ref = _blocks(create_block_mask(mask_mod, 3, None, row_len, row_len, device="cpu", BLOCK_SIZE=block))
    assert ref[0].any() and ref[1].any()  # the layouts have both kinds of blocks
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])


def test_block_mask_from_id_ranges_on_left_padded_stage1_rows_and_the_fallback():
    """Left-padded prompts (generation) keep ids ordered, so the fast path applies and equals the reference; ids out
    of order (not a layout this project builds) take create_block_mask, and attention still equals segments."""
    from torch.nn.attention.flex_attention import create_block_mask

    from genlip.attention import FlexPlan, _ordered_layout, layout_block_mask
    from genlip.masks import Layout, fixed_layout

    lay = fixed_layout(3, 2, 3, torch.tensor([[1] * 7, [0] * 3 + [1] * 4, [0] * 6 + [1]]), 7)
    sids, iids = lay.sample_ids, lay.image_ids
    mm = FlexPlan.mask_mod_for(sids, iids)
    assert bool(_ordered_layout(sids, iids))
    assert all(torch.equal(a, b) for a, b in zip(_blocks(layout_block_mask(sids, iids, mm, 4)),
                                                  _blocks(create_block_mask(mm, 3, None, 13, 13, device="cpu",
                                                                            BLOCK_SIZE=4))))
    packed = packed_layout(ROWS, L)
    flipped = Layout(packed.sample_ids.flip(1), packed.image_ids.flip(1), packed.position_ids)
    assert not bool(_ordered_layout(flipped.sample_ids, flipped.image_ids))
    swapped = packed.image_ids.clone()  # image ids ordered, but one id split over two samples
    swapped[0][swapped[0] == 1] = 0
    assert not bool(_ordered_layout(packed.sample_ids, swapped))
    q, k, v = _qkv()
    with torch.no_grad():
        torch.testing.assert_close(build_plan(flipped, "flex")(q, k, v), build_plan(flipped, "segments")(q, k, v),
                                   atol=1e-5, rtol=1e-5)
