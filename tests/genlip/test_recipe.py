"""Recipes: strict schema, dotted overrides, the paper's stage-1 settings."""

import pytest
import yaml

from genlip.run.config import RecipeError
from genlip.run.resources import resolve_recipe
from genlip.train.recipe import load_recipe


def test_unknown_keys_and_bad_types_are_errors(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"optim": {"lrr": 1.0}}))
    with pytest.raises(RecipeError, match="optim.lrr.*did you mean"):
        load_recipe(p)
    p.write_text(yaml.safe_dump({"trian": {}}))
    with pytest.raises(RecipeError, match="trian"):
        load_recipe(p)
    with pytest.raises(RecipeError, match="optim.lr: expected float"):
        load_recipe(None, ["optim.lr=fast"])
    with pytest.raises(RecipeError, match=r"data.sources.0.type: .zip. is not one of .wds., .parquet., .jsonl."):
        load_recipe(None, ["data.sources=[{path: x, type: zip}]"])


def test_two_sources_of_one_name_are_refused():
    """Each source's read position is saved under its name: two of one name would resume from one position."""
    with pytest.raises(RecipeError, match="two sources are named 'x'"):
        load_recipe(None, ["data.sources=[{path: a.tar, name: x}, {path: b.tar, name: x}]"])
    with pytest.raises(RecipeError, match="two sources are named 'a.tar'.*defaults to its path"):
        load_recipe(None, ["data.sources=[{path: a.tar}, {path: a.tar, weight: 2}]"])
    r = load_recipe(None, ["data.sources=[{path: a.tar}, {path: a.tar, weight: 2, name: again}]"])
    assert [s.name for s in r.data.sources] == ["a.tar", "again"]


def test_dotted_overrides_reach_nested_and_list_items(tmp_path):
    r = load_recipe(resolve_recipe("stage1_So16"), ["optim.lr=2e-4", "data.sources.0.path=/x/{0..3}.tar",
                                                    "model.overrides.drop_path_rate=0.0"])
    assert r.optim.lr == 2e-4 and r.data.sources[0].path == "/x/{0..3}.tar"
    assert r.model.overrides["drop_path_rate"] == 0.0


@pytest.mark.parametrize("name,batch,warmup", [("stage1_L16", 32768, 0.007), ("stage1_So16", 32768, 0.007),
                                               ("stage1_g16", 49152, 0.02)])
def test_paper_stage1_recipes(name, batch, warmup):
    r = load_recipe(resolve_recipe(name))
    o = r.optim
    assert (o.lr, o.min_lr, o.betas, o.eps, o.weight_decay, o.clip_grad) == (1e-3, 1e-6, [0.9, 0.95], 1e-8, 0.01, 1.0)
    assert o.warmup_ratio == warmup and r.train.global_batch == batch and r.data.image_size == 224
    assert r.train.steps * batch >= 7.99e9, "8 epochs of 1B samples"
    assert r.data.sources[0].caption_fields[0] == "json.re_caption"


def test_every_shipped_recipe_parses_and_writes_where_its_name_says():
    """A copied recipe that kept its source's output_dir would resume (or say finished) in another run's directory."""
    from genlip.run.resources import bundled_dir
    from mllm.recipe import MllmRecipe

    for p in sorted(bundled_dir("genlip").glob("*.yaml")):
        r = load_recipe(p)
        assert r.train.output_dir == f"runs/{p.stem}" and r.stage == int(p.stem[len("stage")]), p.name
    for p in sorted(bundled_dir("mllm").glob("*.yaml")):
        r = load_recipe(p, cls=MllmRecipe)
        assert r.train.output_dir == f"runs/mllm_{p.stem}" and p.stem.startswith(r.stage), p.name
        if r.stage == "pretrain":
            assert r.lr.language_model == 0 and r.lr.vision_tower == 0, "alignment trains the projector only"


def test_mllm_paper_recipes_use_llava_next_defaults():
    from mllm.recipe import MllmRecipe

    pre = load_recipe(resolve_mllm("pretrain_qwen2.5-1.5b"), cls=MllmRecipe)
    assert (pre.lr.projector, pre.train.global_batch, pre.train.epochs, pre.model.image_size) == (1e-3, 256, 1, 384)
    ft = load_recipe(resolve_mllm("finetune_qwen2.5-1.5b_frozen"), cls=MllmRecipe)
    assert (ft.lr.language_model, ft.train.global_batch, ft.train.warmup_ratio, ft.train.scheduler) == (
        2e-5, 128, 0.03, "cosine")
    assert pre.data.template == "plain" and ft.data.template == "chat"
    for budget in ("576", "729"):
        unf = load_recipe(resolve_mllm(f"finetune_qwen2.5-7b_unfrozen{budget}"), cls=MllmRecipe)
        assert unf.lr.vision_tower == 2e-6 and unf.train.max_steps == -1 and "LLaVA-NeXT" in unf.data.path
        align = load_recipe(resolve_mllm(f"pretrain_qwen2.5-7b_anyres{budget}"), cls=MllmRecipe)
        assert align.model.mode == "anyres" and align.model.max_grid == 2 and align.data.template == "plain"
        assert (align.model.image_size // 16) ** 2 == int(budget)  # tokens per tile for patch-16 towers
        assert unf.model.init_from == f"runs/{align.train.output_dir.split('/')[-1]}/final"


@pytest.mark.parametrize("table,names", [
    ("Table 3", ["pretrain_qwen2.5-1.5b", "finetune_qwen2.5-1.5b_frozen"]),
    ("Table 4", ["pretrain_qwen2.5-7b", "finetune_qwen2.5-7b_frozen"]),
    ("Table 6", ["pretrain_qwen2.5-7b_anyres576", "finetune_qwen2.5-7b_unfrozen576",
                 "pretrain_qwen2.5-7b_anyres729", "finetune_qwen2.5-7b_unfrozen729"]),
])
def test_each_paper_protocol_has_recipes_whose_header_names_it(table, names):
    from genlip.run.batching import plan_batches
    from mllm.recipe import MllmRecipe

    for name in names:
        path = resolve_mllm(name)
        assert table in path.read_text().splitlines()[0], name
        r = load_recipe(path, cls=MllmRecipe)
        if r.stage == "pretrain":  # the LLM is chosen at alignment; finetuning continues that model
            assert ("Qwen2.5-7B" if "7b" in name else "Qwen2.5-1.5B") in r.model.llm, name
        if r.stage == "finetune" and r.train.max_steps > 0:  # the frozen protocol: LLaVA-NeXT's SFT iterations
            for ws in (8, 16, 32, 64, 128):
                plan = plan_batches(r.train.global_batch, r.train.micro_batch, ws, r.train.max_steps)
                assert abs(plan.budget - 779_000) / 779_000 < 0.01, (name, ws, plan.describe())


def resolve_mllm(name):
    return resolve_recipe(name, "mllm")


def test_recipe_diff_names_changed_keys():
    from genlip.run.config import recipe_diff

    a = load_recipe(resolve_recipe("stage1_tiny_cpu"))
    b = load_recipe(resolve_recipe("stage1_tiny_cpu"), ["optim.lr=5e-4", "data.sources=[{path: x.tar}]"])
    diff = recipe_diff(a, b)
    assert any(d.startswith("optim.lr: 0.002 -> 0.0005") for d in diff)
    assert any(d.startswith("data.sources") for d in diff) and len(diff) == 2


def test_vocabulary_is_the_presets_never_the_tokenizers_length():
    """The paper's (and the release's) 151,936 rows, whatever the tokenizer's length; a tokenizer that does not fit
    is an error, not a silent resize."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from genlip.train.loop import build_model

    def tokenizer(n):
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({f"w{i}": i for i in range(n)},
                                                                                  unk_token="w0")))
        tok.add_special_tokens({"eos_token": "<|im_end|>"})
        return tok

    small = ["model.overrides={num_hidden_layers: 1, hidden_size: 64, num_attention_heads: 4, "
             "intermediate_size: 128, mrope_section: [2, 3, 3]}", "data.image_size=32"]
    r = load_recipe(resolve_recipe("stage1_L16"), small)
    model = build_model(r, tokenizer(151_668))
    assert model.config.vocab_size == 151_936 and model.lm_head.weight.shape[0] == 151_936
    assert model.embed_tokens.weight.shape[0] == 151_936
    with pytest.raises(RecipeError, match="more than the vocabulary of 512"):
        build_model(load_recipe(None, ["model.preset=tiny"]), tokenizer(600))
    r = load_recipe(None, ["model.preset=tiny", "model.overrides.vocab_size=640"])
    assert build_model(r, tokenizer(600)).config.vocab_size == 640
