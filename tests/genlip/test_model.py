"""The model as a whole: gradient coverage, packed == separate, HF round trips, LLaVA tower, preset sizes."""

import json
import warnings

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError

import genlip  # noqa: F401  (registers the Auto classes)
from genlip.config import PRESETS, genlip_config
from genlip.masks import packed_layout
from genlip.modeling import _SAC_KWARGS, GenLIPForCaptioning, GenLIPVisionModel
from tests.dispatch import MatmulDtypes

TINY = ["tiny", "tiny-textproj"]


@pytest.mark.parametrize("preset,gated", [("tiny", True), ("tiny-textproj", True), ("tiny", False), ("small", True)])
def test_every_parameter_gets_a_gradient(preset, gated):
    cfg = genlip_config(preset, patch_size=8, gated_attention=gated, drop_path_rate=0.1)
    model = GenLIPForCaptioning(cfg).train()
    ids = torch.randint(0, cfg.vocab_size, (2, 5))
    model(ids, torch.randn(2, 3, 16, 16), labels=ids).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_packed_row_equals_samples_alone():
    torch.manual_seed(0)
    model = GenLIPForCaptioning(genlip_config("tiny-textproj", patch_size=8)).eval()
    imgs = [torch.randn(3, 16, 24), torch.randn(3, 8, 16)]
    texts = [torch.randint(0, 512, (5,)), torch.randint(0, 512, (3,))]
    alone = [model(t[None], i[None]).logits[0] for i, t in zip(imgs, texts)]
    from genlip.image import patchify

    patches = torch.cat([patchify(i, 8)[0] for i in imgs])
    lay = packed_layout([[[("image", (2, 3)), ("text", 5)], [("image", (1, 2)), ("text", 3)]]], 20)
    ids = torch.zeros(1, 20, dtype=torch.long)
    ids[0, 6:11], ids[0, 13:16] = texts[0], texts[1]
    for backend in ("segments", "dense", "flex"):
        packed = model(ids, patches, layout=lay, attn_backend=backend).logits[0]
        torch.testing.assert_close(packed[:11], alone[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(packed[11:16], alone[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("preset", TINY)
def test_save_load_round_trip_through_auto_classes(tmp_path, preset):
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

    model = GenLIPForCaptioning(genlip_config(preset, patch_size=8)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "genlip"
    assert AutoConfig.from_pretrained(tmp_path).text_embed_dim == model.config.text_embed_dim
    again = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert isinstance(again, GenLIPForCaptioning)
    ids, pix = torch.randint(0, 512, (2, 4)), torch.randn(2, 3, 16, 16)
    assert torch.equal(model(ids, pix).logits, again(ids, pix).logits)
    vision = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(vision, GenLIPVisionModel)
    hidden, _ = model.vit(model.vit.patch_embed(pix), __import__("genlip.masks").masks.image_only_layout(2, 2, 2))
    assert torch.equal(vision(pix).last_hidden_state, hidden)


def test_vision_hidden_states_layers():
    m = GenLIPVisionModel(genlip_config("tiny", patch_size=8, num_hidden_layers=3)).eval()
    pix = torch.randn(1, 3, 16, 16)
    out = m(pix, output_hidden_states=True)
    assert len(out.hidden_states) == 4
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state), "last entry is the final-LayerNorm feature"
    assert not torch.allclose(out.hidden_states[-2], out.last_hidden_state)
    inter = m.forward_intermediates(pix, [1, -1, 2], norm=True)
    torch.testing.assert_close(inter[0], m.vit.norm(out.hidden_states[1]))
    assert torch.equal(inter[1], out.last_hidden_state)
    torch.testing.assert_close(inter[2], m.vit.norm(out.hidden_states[2]))


def test_native_resolution_vision_forward_equals_per_image():
    m = GenLIPVisionModel(genlip_config("tiny", patch_size=8)).eval()
    from genlip.image import patchify

    imgs = [torch.randn(3, 16, 32), torch.randn(3, 24, 8)]
    per = [m(i[None]).last_hidden_state[0] for i in imgs]
    patches = torch.cat([patchify(i, 8)[0] for i in imgs])
    out = m(patches, image_grid_hw=torch.tensor([[2, 4], [3, 1]])).last_hidden_state[0]
    torch.testing.assert_close(out, torch.cat(per), atol=1e-5, rtol=1e-5)


def test_llava_uses_genlip_as_vision_tower():
    from transformers import LlavaConfig, LlavaForConditionalGeneration, Qwen2Config

    vcfg = genlip_config("tiny", patch_size=8)
    tcfg = Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1)
    cfg = LlavaConfig(vision_config=vcfg, text_config=tcfg, image_token_id=299, vision_feature_layer=-1,
                      vision_feature_select_strategy="full", image_seq_length=4)
    llava = LlavaForConditionalGeneration(cfg).eval()
    assert isinstance(llava.model.vision_tower, GenLIPVisionModel)
    pix = torch.randn(1, 3, 16, 16)
    ids = torch.tensor([[1, 299, 299, 299, 299, 5, 6]])
    seen = {}
    llava.model.multi_modal_projector.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    out = llava(input_ids=ids, pixel_values=pix, labels=ids)
    out.loss.backward()
    expect = llava.model.vision_tower(pix).last_hidden_state
    torch.testing.assert_close(seen["x"].reshape(expect.shape), expect)
    assert llava.model.vision_tower.vit.blocks[0].attn.q_proj.weight.grad is not None


@pytest.mark.parametrize("preset,expected", [("L16", 0.3e9), ("So16", 0.4e9), ("g16", 1.1e9)])
def test_paper_presets_have_the_papers_vit_size(preset, expected):
    cfg = genlip_config(preset)
    with torch.device("meta"):
        n = sum(p.numel() for p in GenLIPVisionModel(cfg).parameters())
    assert abs(n - expected) / expected < 0.2, f"{preset}: {n / 1e9:.2f}B"


def test_release_variants_differ_where_the_release_does():
    assert PRESETS["g16-release"]["num_attention_heads"] == 16 and PRESETS["g16"]["num_attention_heads"] == 24
    cfg = genlip_config("L16-release")
    assert cfg.text_embed_dim == 1024 != cfg.hidden_size
    with pytest.raises(KeyError, match="unknown GenLIP preset"):
        genlip_config("L14")


def test_config_rejects_impossible_shapes():
    # the config is a strict dataclass: its validator's ValueError comes wrapped, with the message kept
    with pytest.raises(StrictDataclassClassValidationError,
                       match="ValueError: hidden_size 64 is not divisible by num_attention_heads 5"):
        genlip_config("tiny", num_attention_heads=5)
    with pytest.raises(StrictDataclassClassValidationError,
                       match=r"ValueError: attn_backend must be one of \(.*'segments'.*\), got 'flash'"):
        genlip_config("tiny", attn_backend="flash")


@pytest.mark.parametrize("backend", ["prefix", "dense"])
def test_activation_checkpointing_modes_give_the_same_loss_and_gradients(backend):
    """none / selective / full, with DropPath active (its draws must be replayed in the recomputation)."""
    torch.manual_seed(0)
    model = GenLIPForCaptioning(genlip_config("tiny", patch_size=8, drop_path_rate=0.3, attn_backend=backend)).train()
    ids, pix = torch.randint(0, 512, (2, 5)), torch.randn(2, 3, 16, 16)
    results = {}
    for mode in ("none", "selective", "full"):
        model.zero_grad()
        model.vit.activation_checkpointing = mode
        torch.manual_seed(1)
        loss = model(ids, pix, labels=ids).loss
        loss.backward()
        results[mode] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    for mode in ("selective", "full"):
        torch.testing.assert_close(results[mode][0], results["none"][0], atol=1e-6, rtol=1e-6)
        for n, g in results["none"][1].items():
            torch.testing.assert_close(results[mode][1][n], g, atol=1e-6, rtol=1e-5, msg=f"{mode}: {n}")
    # transformers' switches, both names (the older one without its deprecation warning), are full checkpointing
    is_on = "is_activation_checkpointing" if hasattr(model, "is_activation_checkpointing") else \
        "is_gradient_checkpointing"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for on, off in (("activation_checkpointing_enable", "activation_checkpointing_disable"),
                        ("gradient_checkpointing_enable", "gradient_checkpointing_disable")):
            if not hasattr(model, on):  # transformers before the new names
                continue
            getattr(model, on)({"use_reentrant": True})
            assert model.vit.activation_checkpointing == "full" and getattr(model, is_on)
            getattr(model, off)()
            assert model.vit.activation_checkpointing == "none" and not getattr(model, is_on)
    with pytest.raises(ValueError, match="every_n_layers"):
        model.gradient_checkpointing_enable(every_n_layers=2)


def _checkpointing_model():
    torch.manual_seed(0)
    model = GenLIPForCaptioning(genlip_config("tiny", patch_size=8)).train()
    return model, torch.randint(0, 512, (4, 16)), torch.randn(4, 3, 32, 32)


def test_selective_checkpointing_recomputes_elementwise_work_but_no_matmul():
    model, ids, pix = _checkpointing_model()
    n_matmuls, n_ops = {}, {}
    for mode in ("none", "selective", "full"):
        model.vit.activation_checkpointing = mode
        loss = model(input_ids=ids, pixel_values=pix, labels=ids).loss
        with MatmulDtypes() as rec:
            loss.backward()
        n_matmuls[mode], n_ops[mode] = len(rec.seen), rec.n_ops
    # the backward of each projection is two matmuls; full checkpointing also reruns every block's forward ones
    assert n_matmuls["selective"] == n_matmuls["none"] < n_matmuls["full"], n_matmuls
    # selective reruns the norms, RoPE and gates between them: more work in the backward than none, less than full
    assert n_ops["none"] < n_ops["selective"] < n_ops["full"], n_ops


@pytest.mark.skipif(not _SAC_KWARGS, reason="this PyTorch keeps selective checkpointing's tensors out of sight of "
                    "saved-tensor hooks (no respect_saved_tensors_hooks), so they cannot be counted here")
def test_selective_checkpointing_keeps_less_than_none_and_more_than_full():
    from torch.autograd.graph import saved_tensors_hooks

    model, ids, pix = _checkpointing_model()
    kept = {}
    for mode in ("none", "selective", "full"):
        model.vit.activation_checkpointing = mode
        seen: dict[int, int] = {}

        def pack(t, seen=seen):
            seen[t.data_ptr()] = t.numel() * t.element_size()  # distinct storages only
            return t

        with saved_tensors_hooks(pack, lambda t: t):
            h, layout, _ = model.build_inputs(ids, pix)
            model.vit(h, layout)
        kept[mode] = sum(seen.values())
    assert kept["full"] < kept["selective"] < kept["none"], kept
