"""timm NaFlexViT export: same patch features as ours, strict loading, loud failures, and a non-vacuous check."""

import json

import pytest
import torch

timm = pytest.importorskip("timm")

import genlip  # noqa: E402,F401  (registers the Auto classes)
from genlip.config import PRESETS, GenLIPConfig, genlip_config  # noqa: E402
from genlip.export_timm import (  # noqa: E402
    TIMM_ARCHITECTURE,
    build_timm_model,
    export_timm,
    load_timm_export,
    timm_config,
    to_timm_state_dict,
)
from genlip.modeling import GenLIPForCaptioning, GenLIPVisionModel  # noqa: E402

# Parity tolerance: max abs difference of float32 patch features (|features| ~ 1..5). Measured: ~1e-6.
ATOL = 1e-4
SIZES = [(64, 64), (48, 80)]  # square, and non-square (6x10 patches of 8 px)


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (fixed seed): no zero bias, no identity LayerNorm, no constant LayerScale."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_ln_weight = p.ndim == 1 and name.endswith(("norm.weight", "norm1.weight", "norm2.weight"))
            p.copy_(1.0 + 0.2 * noise if is_ln_weight else 0.1 * noise)
    return model.eval()


def _tiny(gated: bool = True, **overrides) -> GenLIPVisionModel:
    return _randomize(GenLIPVisionModel(genlip_config("tiny", patch_size=8, gated_attention=gated, **overrides)))


def _max_diff(ours: GenLIPVisionModel, theirs: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (ours(x).last_hidden_state - theirs.forward_features(x)).abs().max().item()


@pytest.mark.parametrize("gated", [True, False])
def test_exported_model_gives_our_patch_features(tmp_path, gated):
    ours = _tiny(gated)
    theirs = load_timm_export(export_timm(ours, tmp_path / "timm"))
    assert (theirs.blocks[0].attn.gate is not None) == gated
    for h, w in SIZES:
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            ref = ours(x).last_hidden_state
            feats, out = theirs.forward_features(x), theirs(x)  # empty head: forward() returns the features too
        assert feats.shape == ref.shape == (2, (h // 8) * (w // 8), 64)
        assert ref.std() > 0.5  # features are far from trivial, so ATOL is a tight bound
        assert (feats - ref).abs().max().item() < ATOL, (h, w)
        assert (out - ref).abs().max().item() < ATOL, (h, w)


def test_uneven_mrope_no_layerscale_and_naflex_batches():
    """Clamped MRoPE interleave, LayerScale off, a SwiGLU width that is no round ratio, another theta, and timm's
    NaFlex input (pre-patchified, padded batch of two grids with patch_coord/patch_valid)."""
    from timm.models.naflexvit import batch_patchify

    cfg = GenLIPConfig(hidden_size=96, num_attention_heads=2, num_hidden_layers=2, intermediate_size=200,
                       patch_size=8, mrope_section=[4, 10, 10], layerscale_init=0.0, rope_theta=100.0, vocab_size=32)
    ours = _randomize(GenLIPVisionModel(cfg), seed=1)
    theirs = build_timm_model(cfg)
    result = theirs.load_state_dict(to_timm_state_dict(ours), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert theirs.blocks[0].gamma_1 is None and theirs.blocks[0].mlp.fc2.in_features == 200
    assert _max_diff(ours, theirs, torch.randn(1, 3, 48, 80)) < ATOL

    images = [torch.randn(3, 48, 80), torch.randn(3, 32, 24)]
    n_max = 6 * 10
    patches, coords, valid, refs = [], [], [], []
    for img in images:
        p, (gh, gw) = batch_patchify(img[None], (8, 8))  # (1, n, P*P*C), (ph, pw, C) flattening
        n = gh * gw
        yx = torch.stack(torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij"), -1).reshape(n, 2)
        patches.append(torch.cat([p[0], torch.zeros(n_max - n, p.shape[-1])]))
        coords.append(torch.cat([yx, torch.zeros(n_max - n, 2, dtype=torch.long)]))
        valid.append(torch.arange(n_max) < n)
        with torch.no_grad():
            refs.append(ours(img[None]).last_hidden_state[0])
    with torch.no_grad():
        out = theirs.forward_features(torch.stack(patches), patch_coord=torch.stack(coords),
                                      patch_valid=torch.stack(valid))["patches"]
    for i, ref in enumerate(refs):
        assert (out[i, :len(ref)] - ref).abs().max().item() < ATOL, i


def test_strict_load_and_wrong_configs_fail_loudly():
    ours = _tiny()
    cfg = ours.config
    sd = to_timm_state_dict(ours)
    result = build_timm_model(cfg).load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert not any(k.startswith(("embeds.pos_embed", "embeds.cls_token", "embeds.reg_token", "head")) for k in sd)

    deeper = genlip_config("tiny", patch_size=8, num_hidden_layers=3)
    with pytest.raises(ValueError, match="missing"):
        to_timm_state_dict(ours.state_dict(), deeper)
    with pytest.raises(RuntimeError, match="Missing key"):
        build_timm_model(deeper).load_state_dict(sd, strict=True)
    with pytest.raises(ValueError, match="wrong shape"):  # q_proj is d -> 2d only with the gate
        to_timm_state_dict(ours.state_dict(), genlip_config("tiny", patch_size=8, gated_attention=False))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        build_timm_model(genlip_config("tiny", patch_size=8, gated_attention=False)).load_state_dict(sd)
    broken = dict(ours.state_dict())
    broken["vit.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected"):
        to_timm_state_dict(broken, cfg)
    broken = {"something.else": torch.zeros(1), **ours.state_dict()}
    with pytest.raises(KeyError, match="neither encoder"):
        to_timm_state_dict(broken, cfg)
    with pytest.raises(ValueError, match="GenLIPConfig"):
        to_timm_state_dict(ours.state_dict())


def test_config_edge_cases():
    with pytest.raises(ValueError, match="eps"):  # a config.json can only name timm's LayerNorm (eps 1e-6)
        timm_config(genlip_config("tiny", layer_norm_eps=1e-5))
    cfg = genlip_config("tiny")
    cfg.num_attention_heads = 3  # edited after construction, so GenLIPConfig's own validation did not run
    with pytest.raises(ValueError, match="divisible"):
        timm_config(cfg)
    # a negative H/W section selects no channel in either implementation; timm only accepts it spelled as 0
    ours = _tiny(mrope_section=[3, -1, 2])
    assert timm_config(ours.config)["rope_mrope_section"] == [3, 0, 2]
    theirs = build_timm_model(ours.config)
    theirs.load_state_dict(to_timm_state_dict(ours), strict=True)
    assert _max_diff(ours, theirs, torch.randn(1, 3, 48, 80)) < ATOL


def test_captioning_weights_export_like_the_vision_model():
    cfg = genlip_config("tiny-textproj", patch_size=8)
    cap = _randomize(GenLIPForCaptioning(cfg))
    sd = to_timm_state_dict(cap.state_dict(), cfg)  # text embedding, text projections and LM head dropped
    vision = GenLIPVisionModel(cfg).eval()
    vision.load_state_dict({k: v for k, v in cap.state_dict().items() if k.startswith("vit.")})
    ref = to_timm_state_dict(vision)
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in sd)
    assert to_timm_state_dict(cap.vit.state_dict(), cfg).keys() == sd.keys()  # bare GenLIPTransformer


def test_export_directory_round_trip_and_timm_constructor_paths(tmp_path):
    from timm.models.naflexvit import NaFlexVit, NaFlexVitCfg

    ours = _tiny()
    ours.save_pretrained(tmp_path / "genlip")
    out = export_timm(tmp_path / "genlip", tmp_path / "timm")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    args = config["model_args"]
    assert config["architecture"] == TIMM_ARCHITECTURE and config["num_classes"] == 0
    assert args == timm_config(ours.config)
    assert (args["rope_type"], args["rope_mrope_section"], args["attn_gated"]) == ("mrope", [4, 2, 2], True)
    assert (args["pos_embed"], args["class_token"], args["reg_tokens"], args["global_pool"]) == ("none", False, 0, "")
    assert config["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5]

    x = torch.randn(1, 3, 48, 80)
    from safetensors.torch import load_file

    weights = load_file(str(out / "model.safetensors"))
    fields = {k: v for k, v in args.items() if k not in ("in_chans", "num_classes")}
    models = {
        "local-dir": timm.create_model(f"local-dir:{out}", pretrained=True),  # weights loaded strictly by timm
        "create_model": timm.create_model(TIMM_ARCHITECTURE, pretrained=False, **args),
        "NaFlexVit(cfg)": NaFlexVit(cfg=NaFlexVitCfg(**fields), in_chans=args["in_chans"], num_classes=0),
    }
    for name, model in models.items():
        if name != "local-dir":
            model.load_state_dict(weights, strict=True)
        assert _max_diff(ours, model.eval(), x) < ATOL, name


@pytest.mark.parametrize("name", [
    "vit.blocks.1.attn.q_proj.weight:gate",  # the gate half of the fused q_proj
    "vit.blocks.0.attn.q_proj.weight:query",
    "vit.blocks.0.attn.k_proj.bias",  # not softmax-invariant under RoPE
    "vit.blocks.1.mlp.up_proj.weight",
    "vit.blocks.0.ls2.gamma",
    "vit.patch_embed.proj.weight",
    "vit.norm.bias",
])
def test_changing_our_weights_after_export_breaks_parity(tmp_path, name):
    ours = _tiny()
    theirs = load_timm_export(export_timm(ours, tmp_path / "timm"))
    x = torch.randn(1, 3, 48, 80)
    assert _max_diff(ours, theirs, x) < ATOL
    key, _, part = name.partition(":")
    with torch.no_grad():
        p = ours.state_dict()[key]
        d = ours.config.hidden_size
        rows = {"gate": slice(d, None), "query": slice(0, d)}.get(part, slice(None))
        p[rows] += 0.5 * torch.randn_like(p[rows])
    assert _max_diff(ours, theirs, x) > 10 * ATOL


def test_every_preset_maps_onto_timm_shapes():
    """Release and paper sizes build (on the meta device) with the exact SwiGLU width and gate layout."""
    for preset in PRESETS:
        cfg = genlip_config(preset)
        model = build_timm_model(cfg, device="meta")
        block = model.blocks[0]
        assert block.mlp.fc2.in_features == cfg.intermediate_size, preset
        assert block.attn.head_dim == cfg.head_dim and block.attn.gate.out_features == cfg.hidden_size, preset
        assert list(model.rope.mrope_section) == cfg.mrope_section, preset
