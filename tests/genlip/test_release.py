"""Loading the public release's checkpoint layout, checked against a plain reference forward of the spec."""

import json

import pytest
import torch
from safetensors.torch import save_file

from genlip.release import convert_release_state_dict, load_release_checkpoint
from tests.reference_genlip import random_release_checkpoint, ref_forward, release_config


def _write(tmp_path, cfg, sd, sharded=False):
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    if not sharded:
        save_file(sd, str(tmp_path / "model.safetensors"))
        return
    keys = sorted(sd)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(tmp_path / name))
    index = {"weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("text_dim,sharded", [(48, False), (32, True)])
def test_release_checkpoint_matches_reference_forward(tmp_path, text_dim, sharded):
    cfg = release_config(text_embed_dim=text_dim)
    sd = random_release_checkpoint(cfg)
    _write(tmp_path, cfg, sd, sharded)
    model = load_release_checkpoint(tmp_path)
    assert model.config.text_embed_dim == text_dim and model.config.mrope_section == [2, 2, 2]
    g = torch.Generator().manual_seed(1)
    image, text = torch.randn(3, 16, 24, generator=g), torch.randint(0, 97, (6,), generator=g)
    with torch.no_grad():
        ours = model(text[None], image[None]).logits[0]
    ref = ref_forward(sd, cfg, image, text)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=2e-4)
    vision = load_release_checkpoint(tmp_path, vision_only=True)
    with torch.no_grad():
        feats = vision(image[None]).last_hidden_state
    assert feats.shape == (1, 6, 48)


def test_bf16_release_weights_and_wrapper_prefix(tmp_path):
    cfg = release_config()
    sd = {f"model.{k}": v.to(torch.bfloat16) for k, v in random_release_checkpoint(cfg).items()}
    _write(tmp_path, cfg, sd)
    model = load_release_checkpoint(tmp_path, dtype=torch.float32)
    assert model.lm_head.weight.dtype == torch.float32
    q = model.vit.blocks[1].attn.q_proj.weight
    assert torch.equal(q, sd["model.visual.layers.1.self_attn.q_proj.weight"].float())


def test_unknown_or_misshapen_release_keys_are_errors(tmp_path):
    cfg = release_config()
    sd = random_release_checkpoint(cfg)
    with pytest.raises(KeyError, match="no mapping"):
        convert_release_state_dict({**sd, "visual.layers.0.extra_norm.weight": torch.ones(1)})
    bad = dict(sd)
    bad["visual.layers.0.self_attn.q_proj.weight"] = bad["visual.layers.0.self_attn.q_proj.weight"][:48]
    _write(tmp_path, cfg, bad)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_release_checkpoint(tmp_path)


@pytest.mark.parametrize("change,match", [
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"mrope_interleaved": False}, "mrope_interleaved=False"),
    ({"rope_scaling": {"mrope_interleaved": False}}, "mrope_interleaved=False"),
    ({"use_swiglu_ffn": False}, "plain MLP"),
])
def test_config_values_the_model_does_not_implement_are_refused(tmp_path, change, match):
    """A checkpoint that computes something else must not load as if it were ours."""
    cfg = release_config()
    _write(tmp_path, {**cfg, **change}, random_release_checkpoint(cfg))
    with pytest.raises(ValueError, match=match):
        load_release_checkpoint(tmp_path)
    # the values this model implements load
    _write(tmp_path, {**cfg, "hidden_act": "silu", "mrope_interleaved": True}, random_release_checkpoint(cfg))
    assert load_release_checkpoint(tmp_path) is not None
