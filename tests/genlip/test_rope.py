"""Interleaved MRoPE: parity with transformers' Qwen3-VL rotary embedding, and the 2-D relative property."""

import pytest
import torch

from genlip.positions import sample_position_ids
from genlip.rope import MRoPE, apply_rope, mrope_axis_of_channel


@pytest.mark.parametrize("head_dim,section",
                         [(64, [8, 12, 12]), (72, [12, 12, 12]), (96, [16, 16, 16]), (32, [6, 5, 5])])
def test_cos_sin_match_qwen3_vl(head_dim, section):
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

    cfg = Qwen3VLTextConfig(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim,
                            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                             "mrope_section": section, "mrope_interleaved": True})
    ref = Qwen3VLTextRotaryEmbedding(cfg)
    pos = sample_position_ids([("image", (5, 7)), ("text", 9)])[:, None, :]  # (3, 1, L)
    x = torch.zeros(1, pos.shape[-1], head_dim)
    ref_cos, ref_sin = ref(x, pos)
    cos, sin = MRoPE(head_dim, section, 10000.0)(pos)
    torch.testing.assert_close(cos, ref_cos, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sin, ref_sin, atol=1e-6, rtol=1e-5)


def test_l16_section_channel_counts():
    axis = mrope_axis_of_channel(32, [8, 12, 12])  # L/16: head_dim 64
    assert [(axis == a).sum().item() for a in range(3)] == [11, 11, 10]
    axis = mrope_axis_of_channel(36, [12, 12, 12])  # So/16: head_dim 72
    assert [(axis == a).sum().item() for a in range(3)] == [12, 12, 12]


def test_image_rope_is_relative_in_2d():
    """q.k depends only on the (row, col) offset: the reason the encoder runs at any resolution."""
    hd = 32
    rope = MRoPE(hd, [6, 5, 5])
    q, k = torch.randn(1, 1, 1, hd), torch.randn(1, 1, 1, hd)

    def score(pq, pk):
        pos = torch.tensor([[pq, pk]]).permute(2, 0, 1)  # (3, 1, 2)
        cos, sin = rope(pos)
        qr = apply_rope(q, cos[:, :1], sin[:, :1])
        kr = apply_rope(k, cos[:, 1:], sin[:, 1:])
        return (qr * kr).sum()

    a = score((0, 1, 2), (0, 3, 5))
    b = score((0, 11, 7), (0, 13, 10))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    c = score((0, 11, 7), (0, 13, 11))
    assert not torch.allclose(a, c, atol=1e-3)
