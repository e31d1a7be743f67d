"""Recipes: strict schema, dotted overrides, the paper's stage-1 settings."""

import pytest
import yaml

from genlip.train.cli import resolve_recipe
from genlip.train.recipe import RecipeError, load_recipe


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
    with pytest.raises(RecipeError, match="source type"):
        load_recipe(None, ["data.sources=[{path: x, type: zip}]"])


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
