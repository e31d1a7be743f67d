"""Gated attention, patch embedding, DropPath: behaviour of the building blocks."""

import torch

from genlip.attention import build_plan
from genlip.config import genlip_config
from genlip.image import patchify
from genlip.layers import DropPath, GatedAttention, PatchEmbed
from genlip.masks import image_only_layout
from genlip.modeling import GenLIPVisionModel
from genlip.rope import MRoPE


def _attn_inputs(dim=32, heads=4, L=6):
    lay = image_only_layout(2, 2, 3)
    rope = MRoPE(dim // heads, [2, 1, 1])(lay.position_ids)
    return torch.randn(2, L, dim), rope, build_plan(lay, "segments")


def test_gate_at_init_is_one_half_with_zero_gate_logits():
    torch.manual_seed(0)
    gated, plain = GatedAttention(32, 4, gated=True), GatedAttention(32, 4, gated=False)
    with torch.no_grad():
        for name in ("k_proj", "v_proj", "out_proj"):
            getattr(plain, name).load_state_dict(getattr(gated, name).state_dict())
        plain.q_proj.weight.copy_(gated.q_proj.weight[:32])
        plain.q_proj.bias.copy_(gated.q_proj.bias[:32])
        gated.q_proj.weight[32:].zero_()  # gate logits = bias = 0 -> sigmoid = 0.5
        gated.q_proj.bias[32:].zero_()
    x, rope, plan = _attn_inputs()
    # out_proj is affine: out_proj(0.5 * a) = 0.5 * (out_proj(a) - b) + b
    b = plain.out_proj.bias
    torch.testing.assert_close(gated(x, rope, plan) - b, 0.5 * (plain(x, rope, plan) - b), atol=1e-6, rtol=1e-5)


def test_gate_is_elementwise_per_head_channel():
    torch.manual_seed(0)
    attn = GatedAttention(32, 4)
    assert attn.q_proj.weight.shape == (64, 32), "fused [query; gate] projection"
    x, rope, plan = _attn_inputs()
    captured = {}
    attn.out_proj.register_forward_pre_hook(lambda m, a: captured.setdefault("in", a[0]))
    attn(x, rope, plan)
    gate = torch.sigmoid(attn.q_proj(x)[..., 32:])
    assert captured["in"].shape == x.shape == gate.shape
    # closing one channel's gate zeroes exactly that channel of the attention output
    with torch.no_grad():
        attn.q_proj.bias[32 + 5] = -1e4
    captured.clear()
    attn(x, rope, plan)
    assert captured["in"][..., 5].abs().max() == 0
    assert captured["in"][..., 4].abs().min() > 0


def test_patch_embed_images_and_patches_agree():
    pe = PatchEmbed(8, 3, 16)
    img = torch.randn(3, 24, 40)
    from_image = pe(img[None])[0]
    patches, grid = patchify(img, 8)
    assert grid == (3, 5)
    torch.testing.assert_close(pe.embed_patches(patches), from_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pe.embed_patches(patches.flatten(1)), from_image, atol=1e-5, rtol=1e-5)


def test_drop_path_drops_whole_packed_samples():
    dp = DropPath(0.5).train()
    x = torch.ones(4, 9, 3)
    sids = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2, -1]] * 4)
    y = dp(x, sids)
    for b in range(4):
        for s in range(3):
            vals = y[b][sids[b] == s].unique()
            assert len(vals) == 1 and vals.item() in (0.0, 2.0), "one keep/drop decision per sample, rescaled"
    assert torch.equal(dp.eval()(x, sids), x)


def test_vision_model_runs_any_resolution():
    m = GenLIPVisionModel(genlip_config("tiny", patch_size=8)).eval()
    for hw in [(16, 16), (24, 64), (72, 8)]:
        out = m(torch.randn(1, 3, *hw))
        assert out.last_hidden_state.shape == (1, hw[0] * hw[1] // 64, 64)
        assert torch.isfinite(out.last_hidden_state).all()
