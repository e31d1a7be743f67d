"""Every tower type through forward, backward and generate, in every mode it supports; features land exactly on
the image tokens; token counts equal transformers' own processors; save -> load -> same tokens."""

import re

import pytest
import torch
from PIL import Image

from genlip.run.config import RecipeError
from mllm.build import build_mllm, load_mllm, save_mllm
from mllm.processing import ConversationEncoder, make_image_processor, preprocess_images
from mllm.recipe import MllmRecipe
from mllm.train import apply_trainable, check_model_paths
from tests.mllm_fixtures import TOWER_MODES, make_llm, make_towers

CASES = [(t, m) for t, modes in TOWER_MODES.items() for m in modes]
CONV = [{"from": "human", "value": "<image>\nwhat color is the square?"}, {"from": "gpt", "value": "red"},
        {"from": "human", "value": "and this one? <image>"}, {"from": "gpt", "value": "the word apple"}]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("mllm")
    return make_towers(root), make_llm(root)


def _images():
    a = Image.new("RGB", (40, 24), (200, 10, 10))
    b = Image.new("RGB", (20, 36), (10, 10, 200))
    return [a, b]


def _build(ckpts, tower, mode):
    towers, llm = ckpts
    return build_mllm(str(towers[tower]), str(llm), mode, image_size=32 if tower == "genlip" else None,
                      max_tokens=24, min_tokens=4)


def _inputs(model, tok, spec, images=None):
    images = images or _images()
    enc = ConversationEncoder(tok, spec, model.config.image_token_id)
    ids, labels = enc.encode(CONV, images)
    px = preprocess_images(spec, images, make_image_processor(spec))
    return torch.tensor([ids]), torch.tensor([labels]), px


@pytest.mark.parametrize("tower,mode", CASES)
def test_forward_backward_generate(ckpts, tower, mode):
    torch.manual_seed(0)
    model, tok, spec = _build(ckpts, tower, mode)
    ids, labels, px = _inputs(model, tok, spec)
    apply_trainable(model, {"projector": 1e-3, "language_model": 1e-5, "vision_tower": 0.0})
    out = model(input_ids=ids, labels=labels, **px)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is None for p in model.model.vision_tower.parameters()), "a frozen tower gets no gradient"
    assert all(p.grad is not None for p in model.model.multi_modal_projector.parameters())
    model.eval()
    gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False, **px)
    assert gen.shape[1] == ids.shape[1] + 4 or tok.convert_tokens_to_ids("<|im_end|>") in gen[0, ids.shape[1]:]


@pytest.mark.parametrize("tower,mode", [("genlip", "resize"), ("clip", "resize"), ("siglip", "anyres"),
                                        ("genlip", "native"), ("siglip2", "native")])
def test_image_features_land_exactly_on_image_tokens(ckpts, tower, mode):
    torch.manual_seed(0)
    model, tok, spec = _build(ckpts, tower, mode)
    model.eval()
    ids, _, px = _inputs(model, tok, spec)
    captured = {}
    lm = model.model.language_model

    def grab(module, args, kwargs):
        captured["emb"] = kwargs["inputs_embeds"]

    lm.register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        model(input_ids=ids, **px)
        if mode == "native":
            feats = torch.cat(model.native_image_features(**{k: px[k] for k in px}))
        else:
            kw = {"image_sizes": px["image_sizes"]} if mode == "anyres" else {}
            feats = torch.cat(list(model.model.get_image_features(
                pixel_values=px["pixel_values"], vision_feature_layer=model.config.vision_feature_layer,
                vision_feature_select_strategy=model.config.vision_feature_select_strategy, **kw).pooler_output))
        text = model.model.get_input_embeddings()(ids)
    emb = captured["emb"][0]
    is_img = ids[0] == model.config.image_token_id
    assert int(is_img.sum()) == feats.shape[0]
    assert torch.equal(emb[is_img], feats.to(emb.dtype)), "image features, in order, on the image tokens"
    assert torch.equal(emb[~is_img], text[0][~is_img]), "text embeddings untouched"


def test_clip_cls_is_dropped_and_layer_is_selectable(ckpts):
    towers, llm = ckpts
    model, tok, spec = build_mllm(str(towers["clip"]), str(llm), "resize", feature_layer=-2)
    assert model.config.vision_feature_select_strategy == "default" and spec.has_cls
    img = _images()[0]
    assert spec.num_tokens(img) == (32 // 8) ** 2, "CLS token not counted"
    px = preprocess_images(spec, [img], make_image_processor(spec))["pixel_values"]
    with torch.no_grad():
        hs = model.model.vision_tower(px, output_hidden_states=True).hidden_states[-2][:, 1:]
        feats = model.model.get_image_features(pixel_values=px, vision_feature_layer=-2,
                                               vision_feature_select_strategy="default").pooler_output[0]
        torch.testing.assert_close(feats, model.model.multi_modal_projector(hs)[0])


@pytest.mark.parametrize("tower,mode", [("siglip", "resize"), ("clip", "resize"), ("genlip", "anyres"),
                                        ("clip", "anyres")])
def test_token_counts_equal_transformers_processors(ckpts, tower, mode, tmp_path):
    """Our expansion of <image> is what transformers' own saved processor produces."""
    from transformers import AutoProcessor

    model, tok, spec = _build(ckpts, tower, mode)
    save_mllm(tmp_path, model, tok, spec)
    proc = AutoProcessor.from_pretrained(tmp_path)
    for img in [Image.new("RGB", (40, 24)), Image.new("RGB", (24, 80)), Image.new("RGB", (32, 32))]:
        ids = proc(text="<image>", images=[img], return_tensors="pt")["input_ids"][0]
        assert int((ids == model.config.image_token_id).sum()) == spec.num_tokens(img)


@pytest.mark.parametrize("tower,mode", [("genlip", "resize"), ("siglip", "anyres"), ("genlip", "native")])
def test_saved_model_reloads_and_generates_the_same_tokens(ckpts, tower, mode, tmp_path):
    torch.manual_seed(0)
    model, tok, spec = _build(ckpts, tower, mode)
    model.eval()
    ids, _, px = _inputs(model, tok, spec)
    kw = dict(max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(ids))
    before = model.generate(input_ids=ids, **px, **kw)
    save_mllm(tmp_path, model, tok, spec)
    again, tok2, spec2, ip2 = load_mllm(tmp_path)
    ids2, _, px2 = _inputs(again, tok2, spec2)
    assert torch.equal(ids, ids2)
    after = again.eval().generate(input_ids=ids2, **px2, **kw)
    assert torch.equal(before, after)
    if mode != "native":  # plain transformers, no project code needed to load it
        from transformers import AutoModelForImageTextToText

        plain = AutoModelForImageTextToText.from_pretrained(tmp_path)
        assert type(plain).__module__.startswith("transformers.")


def test_a_tower_that_is_not_there_is_one_line(ckpts, tmp_path):
    """A path-like ``model.vision`` that does not exist never reaches the Hub; an ``owner/name`` Hub id is looked up
    in the local Hugging Face cache, and if it is not there either, that too is one line."""
    from mllm.towers import load_vision_config, looks_like_path

    assert all(looks_like_path(p) for p in ("/no/such", "./x", "../x", "~/x", "runs/a/b", "runs/a/"))
    assert not any(looks_like_path(p) for p in ("google/siglip-so400m-patch14-384", "gpt2"))
    towers, _ = ckpts
    assert load_vision_config(str(towers["siglip"])).model_type == "siglip_vision_model"
    with pytest.raises(FileNotFoundError, match=r"^/no/such/dir: no such directory$"):
        load_vision_config("/no/such/dir")
    with pytest.raises(FileNotFoundError, match="^no-such-owner/no-such-tower: no such directory, nor a model in the "
                                                "local Hugging Face cache") as e:
        load_vision_config("no-such-owner/no-such-tower")  # offline in tests (conftest): not in the cache
    assert "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: not a model directory \(no config.json\)$"):
        load_vision_config(str(tmp_path / "empty"))


def _recipe(**model):
    r = MllmRecipe()
    for k, v in model.items():
        setattr(r.model, k, v)
    return r


def test_towers_and_llms_that_do_not_fit_the_recipe_are_recipe_errors_naming_the_key(ckpts, tmp_path, monkeypatch):
    """What build_mllm would refuse only after the data is generated is found by check_model_paths first, as a
    RecipeError (one line, exit code 2) that names the key to change."""
    towers = ckpts[0]
    llm = make_llm(tmp_path / "llm")
    (tmp_path / "empty").mkdir()
    step = tmp_path / "s2run" / "checkpoints" / "step_00000010"  # a genlip-pretrain run directory
    step.mkdir(parents=True)
    (step / "trainer_state.json").write_text("{}")
    cases = [
        (dict(vision=str(towers["genlip"]), llm=str(tmp_path / "s2run")),
         f"model.llm: {tmp_path / 's2run'}: a GenLIP pretraining run (an image encoder: model.vision takes it), not a "
         "causal language model"),
        (dict(vision=str(towers["siglip"]), llm=str(llm), mode="native"),
         "model.mode=native needs a GenLIP or SigLIP2-NaFlex tower, not siglip"),
        (dict(vision=str(towers["siglip"]), llm=str(llm), image_size=48),
         "model.image_size=48: the siglip tower has position embeddings for 32 px; set model.image_size=32"),
        (dict(vision=str(towers["siglip2"]), llm=str(llm), mode="resize"), "set model.mode=native"),
        (dict(vision=str(towers["clip"]), llm=str(llm), feature_layer=-10),
         "model.feature_layer=-10: the clip tower has 2 layers, so hidden_states[i] exists for i in -3..2"),
        (dict(vision=str(towers["genlip"]), llm=str(tmp_path / "empty")), "not a model directory (no config.json)"),
        (dict(vision=str(towers["genlip"]), llm=str(towers["siglip"])),
         "a 'siglip_vision_model' checkpoint, not a causal language model"),
    ]
    for model, want in cases:
        with pytest.raises(RecipeError, match=re.escape(want)):
            check_model_paths(_recipe(**model))
    check_model_paths(_recipe(vision=str(towers["clip"]), llm=str(llm), feature_layer=-3))  # the embeddings: fine
    check_model_paths(_recipe(vision=str(towers["genlip"]), llm=str(llm), mode="native"))
    (llm / "tokenizer.json").unlink()
    (llm / "tokenizer_config.json").unlink()
    with pytest.raises(RecipeError, match="no tokenizer files"):
        check_model_paths(_recipe(vision=str(towers["genlip"]), llm=str(llm)))
    # a Hub id is read from the local cache only unless HF_HUB_OFFLINE=0 asks for downloads: no network by default
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for key, model in (("vision", dict(vision="someone/no-such-model", llm=str(llm))),
                       ("llm", dict(vision=str(towers["genlip"]), llm="someone/no-such-llm"))):
        with pytest.raises(RecipeError, match=re.escape(f"model.{key}: someone/no-such-") + ".*local Hugging Face "
                           "cache \\(HF_HUB_OFFLINE=0 lets a Hub id be downloaded\\)"):
            check_model_paths(_recipe(**model))
    # a misspelt relative path next to the folder it names is a path, not a Hub id to try (and wait for)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match=re.escape("model.vision: llm/typo: no such directory")):
        check_model_paths(_recipe(vision="llm/typo", llm=str(llm)))


def test_a_towers_own_normalisation_is_used_and_a_broken_one_refused(ckpts, tmp_path):
    """A tower directory's preprocessor_config.json (what it was trained with) decides the image normalisation; the
    kind's published values are for towers without one. A config that cannot say is refused, not replaced."""
    import json
    import shutil

    towers, llm = ckpts
    clip = tmp_path / "clip"
    shutil.copytree(towers["clip"], clip)
    _, _, spec = build_mllm(str(clip), str(llm), "resize")
    assert spec.image_mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])  # CLIP's, without a processor file
    (clip / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3],
                                                               "image_std": [0.5, 0.6, 0.7]}))
    _, _, spec = build_mllm(str(clip), str(llm), "resize")
    assert (spec.image_mean, spec.image_std) == ([0.1, 0.2, 0.3], [0.5, 0.6, 0.7])
    assert list(make_image_processor(spec).image_mean) == [0.1, 0.2, 0.3]
    (clip / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2], "image_std": [0.5, 0.6, 0.7]}))
    recipe = MllmRecipe()
    recipe.model.vision, recipe.model.llm = str(clip), str(llm)
    with pytest.raises(RecipeError, match=r"preprocessor_config.json: image_mean and image_std must be three numbers"):
        check_model_paths(recipe)


def test_a_siglip2_token_budget_that_leaves_no_room_for_text_is_refused_up_front(ckpts):
    """SigLIP2-NaFlex scales every image up to model.max_image_tokens: at or above data.max_length every sample
    would be dropped as too long on the first batch."""
    towers, llm = ckpts
    recipe = MllmRecipe()
    recipe.model.vision, recipe.model.llm, recipe.model.mode = str(towers["siglip2"]), str(llm), "native"
    recipe.data.max_length = 512
    with pytest.raises(RecipeError, match=r"model.max_image_tokens=576: a SigLIP2 tower takes every image at that "
                                          r"many tokens, .* data.max_length=512; lower"):
        check_model_paths(recipe)
    recipe.model.max_image_tokens = 64
    check_model_paths(recipe)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("mode", ["resize", "anyres", "native"])
def test_the_llm_keeps_its_own_output_layer_tying_in_every_mode(ckpts, tmp_path, mode, tied):
    """anyres (LlavaNextConfig) untied a tied LLM's output layer from its embeddings (found by a user: a separate
    head that training moved apart, vocab x hidden more parameters). Every mode keeps the LLM's tying, with the LLM's
    weights, through save and load; an untied LLM stays untied with its own head."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    towers, llm = ckpts
    ref = AutoModelForCausalLM.from_pretrained(str(llm))
    assert ref.config.tie_word_embeddings  # the fixture's tiny LLM is tied, like Qwen2.5-0.5B..3B
    if not tied:
        ref.config.tie_word_embeddings = False
        untied = AutoModelForCausalLM.from_config(ref.config)
        untied.model.load_state_dict(ref.model.state_dict())
        untied.lm_head.weight.data = torch.randn_like(untied.lm_head.weight)
        llm = tmp_path / "untied"
        untied.save_pretrained(llm)
        AutoTokenizer.from_pretrained(str(ckpts[1])).save_pretrained(llm)
        ref = untied
    model, tok, spec = build_mllm(str(towers["genlip"]), str(llm), mode, image_size=32, max_tokens=24, min_tokens=4)
    save_mllm(tmp_path / "m", model, tok, spec)
    for m in (model, load_mllm(tmp_path / "m")[0]):
        emb, head = m.model.language_model.embed_tokens.weight, m.lm_head.weight
        n = ref.config.vocab_size
        assert m.config.tie_word_embeddings is tied and (emb.data_ptr() == head.data_ptr()) is tied
        assert torch.equal(emb[:n], ref.model.embed_tokens.weight) and torch.equal(head[:n], ref.lm_head.weight)


def test_lora_counts_the_projector_once(ckpts):
    """Under LoRA PEFT keeps a frozen copy of the projector beside the one that trains; the table counted both
    ("trainable 0.033M of 0.066M", found by a user). Each group is counted once, as the model has it."""
    from mllm.train import _with_lora

    model, _, _ = _build(ckpts, "genlip", "resize")
    sizes = {g: sum(p.numel() for p in getattr(model.model, m).parameters())
             for g, m in (("projector", "multi_modal_projector"), ("vision_tower", "vision_tower"))}
    counts = apply_trainable(_with_lora(model, MllmRecipe()), {"projector": 1e-3, "language_model": 1e-4,
                                                               "vision_tower": 0.0}, lora=True)
    assert counts["projector"] == (sizes["projector"], sizes["projector"])
    assert counts["vision_tower"] == (0, sizes["vision_tower"])
    assert 0 < counts["language_model"][0] < counts["language_model"][1]  # the adapters only
