"""Who attends to whom, and where every token sits: pure functions, no model."""

import pytest
import torch

from genlip.masks import fixed_layout, image_only_layout, packed_layout, prefix_lm_mask, segment_bounds
from genlip.positions import packed_position_ids, sample_position_ids


def _mask_for(rows, row_len):
    lay = packed_layout(rows, row_len)
    return lay, prefix_lm_mask(lay.sample_ids, lay.image_ids)


def test_single_sample_prefix_lm():
    # 2x2 image (4 tokens) then 3 text tokens
    lay, m = _mask_for([[[("image", (2, 2)), ("text", 3)]]], 7)
    m = m[0]
    img, txt = slice(0, 4), slice(4, 7)
    assert m[img, img].all(), "image tokens see their whole image, both directions"
    assert not m[img, txt].any(), "image never attends to text"
    assert m[txt, img].all(), "text sees the whole image"
    assert torch.equal(m[txt, txt], torch.tril(torch.ones(3, 3, dtype=torch.bool))), "text is causal"


def test_packed_samples_never_cross_and_padding_is_isolated():
    rows = [[[("image", (1, 2)), ("text", 2)], [("image", (2, 1)), ("text", 1)], [("text", 2)]]]
    lay, m = _mask_for(rows, 12)
    m = m[0]
    sid = lay.sample_ids[0]
    assert sid.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, -1, -1, -1]
    for q in range(12):
        for k in range(12):
            if sid[q] != sid[k] or sid[q] < 0:
                assert not m[q, k], (q, k)
    pad = sid < 0
    assert not m[pad].any() and not m[:, pad].any()
    # the second sample's image (tokens 4, 5) sees itself both ways but not its text (6)
    assert m[4, 5] and m[5, 4] and not m[4, 6] and not m[5, 6] and m[6, 4] and m[6, 5]
    # text-only sample is plain causal
    assert m[7, 7] and not m[7, 8] and m[8, 7]


def test_two_images_in_one_sample_do_not_see_later_images():
    lay, m = _mask_for([[[("image", (1, 2)), ("image", (1, 2)), ("text", 1)]]], 5)
    m = m[0]
    assert lay.image_ids[0].tolist() == [0, 0, 1, 1, -1]
    assert not m[0, 2] and not m[1, 3], "first image does not see the second"
    assert m[2, 0] and m[3, 3] and m[2, 3], "the second image sees earlier tokens and all of itself"


def test_mask_matches_formula_on_random_layouts():
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        rows = []
        for _ in range(2):
            row = []
            for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
                gh, gw, n = (int(x) for x in torch.randint(1, 4, (3,), generator=g))
                row.append([("image", (gh, gw)), ("text", n)])
            rows.append(row)
        lay, m = _mask_for(rows, 64)
        s, i = lay.sample_ids, lay.image_ids
        for b in range(2):
            for q in range(64):
                for k in range(0, 64, 3):
                    same = s[b, q] >= 0 and s[b, q] == s[b, k]
                    expect = bool(same and (q >= k or (i[b, q] >= 0 and i[b, q] == i[b, k])))
                    assert bool(m[b, q, k]) == expect


def test_positions_image_then_text():
    pos = sample_position_ids([("image", (2, 3)), ("text", 2)])
    assert pos[:, :6].tolist() == [[0] * 6, [0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2]]
    assert pos[:, 6:].tolist() == [[3, 4], [3, 4], [3, 4]], "text starts at max(grid_h, grid_w)"
    tall = sample_position_ids([("image", (4, 1)), ("text", 1)])
    assert tall[:, -1].tolist() == [4, 4, 4]


def test_positions_restart_per_packed_sample_and_padding_zero():
    pos = packed_position_ids([[("image", (1, 1)), ("text", 2)], [("image", (2, 2)), ("text", 1)]], 10)
    assert pos[0].tolist() == [0, 1, 2, 0, 0, 0, 0, 2, 0, 0]
    assert pos[1].tolist() == [0, 1, 2, 0, 0, 1, 1, 2, 0, 0]
    assert pos[2].tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 0, 0]
    with pytest.raises(ValueError, match="samples need 5 tokens but the row holds 4"):
        packed_position_ids([[("text", 5)]], 4)


def test_fixed_layout_equals_packed_layout_of_one_sample():
    f = fixed_layout(2, 2, 3, torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]), 4)
    p = packed_layout([[[("image", (2, 3)), ("text", 3)]], [[("image", (2, 3)), ("text", 4)]]], 10)
    assert torch.equal(f.sample_ids, p.sample_ids)
    assert torch.equal(f.image_ids, p.image_ids)
    real = f.sample_ids >= 0
    assert torch.equal(f.position_ids[:, real], p.position_ids[:, real])


def test_image_only_layout_is_full_attention():
    lay = image_only_layout(2, 3, 4)
    assert prefix_lm_mask(lay.sample_ids, lay.image_ids).all()


def test_segment_bounds_rejects_non_contiguous_samples():
    assert segment_bounds(torch.tensor([[0, 0, -1, 1]])) == [[(0, 2), (3, 4)]]
    with pytest.raises(ValueError, match="contiguous"):
        segment_bounds(torch.tensor([[0, 1, 0]]))
