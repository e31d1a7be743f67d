"""One strict config system for every file a user writes (recipes of all stages, sweep grids, pipeline configs):
every choice field refuses a value outside its choices with the allowed values in one line, unknown keys are errors
with a suggestion, and a recipe can be its differences from a ``base:``."""

import dataclasses
import os
import re
import sys
import typing
from pathlib import Path
from typing import Literal

import pytest
import yaml

from eval.pipeline_config import PipelineConfig
from eval.pipeline_config import load_config as load_pipeline_config
from eval.sweep import Grid, load_grid
from genlip.run.config import RecipeError, build, changed_since, read_values, to_dict
from genlip.run.resources import bundled_names, resolve_recipe
from genlip.train.recipe import Recipe, load_recipe
from mllm.recipe import SCHEDULERS, MllmRecipe
from tests.cli import run_cli

BIN = Path(sys.executable).parent
GRID = {"encoders": {"genlip": {"path": "runs/x"}}, "llms": {"tiny": "tiny"},
        "protocols": {"frozen": {"mode": "resize", "lr_vision": 0.0}}, "suites": ["synth"]}


def _refused(load, path: Path, text: str, match: str) -> None:
    path.write_text(text)
    with pytest.raises(RecipeError, match=match):
        load(path)


def choice_fields(cls, prefix=""):
    """(dotted path, allowed values) of every Literal field of a schema, through nested dataclasses, lists and
    dicts of them (a list item as ``.0``, a dict entry under the first key of the example)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is Literal:
            yield prefix + f.name, args
        elif dataclasses.is_dataclass(tp):
            yield from choice_fields(tp, f"{prefix}{f.name}.")
        elif origin is list and args and dataclasses.is_dataclass(args[0]):
            yield from choice_fields(args[0], f"{prefix}{f.name}.0.")
        elif origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
            yield from choice_fields(args[1], f"{prefix}{f.name}.*.")


def _set(d: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d[int(p)] if isinstance(d, list) else d[next(iter(d))] if p == "*" else d[p]
    d[parts[-1]] = value


COMPANIONS = {"model.compile_scope": ["model.activation_checkpointing=none"]}  # the one-graph scope needs it


@pytest.mark.parametrize("cls,load", [
    (Recipe, lambda ov: load_recipe(resolve_recipe("stage1_So16"), ov)),
    (MllmRecipe, lambda ov: load_recipe(resolve_recipe("finetune_tiny_cpu", "mllm"), ov, cls=MllmRecipe)),
])
def test_every_recipe_choice_field_refuses_an_unknown_value(cls, load):
    fields = dict(choice_fields(cls))
    expected = {Recipe: {"stage", "model.objective", "model.attn_backend", "model.loss_impl", "train.precision",
                         "train.parallel", "train.cpu_allocator", "data.sources.0.type", "data.sources.0.split"},
                MllmRecipe: {"stage", "model.mode", "train.scheduler", "train.precision", "train.cpu_allocator"}}[cls]
    assert expected <= set(fields)
    for path, allowed in fields.items():
        with pytest.raises(RecipeError) as e:
            load([f"{path}=bogus_choice"])
        msg = str(e.value)
        assert path in msg and all(repr(a) in msg for a in allowed) and "\n" not in msg, msg
        # every listed value loads (with what a cross-field rule asks for beside it)
        assert load([f"{path}={allowed[-1]}", *COMPANIONS.get(path, [])]) is not None


def test_a_yaml_boolean_given_for_a_choice_says_how_yaml_read_it():
    """``model.activation_checkpointing=yes`` arrives as True: the message says why, instead of a True never typed."""
    with pytest.raises(RecipeError, match=r"model.activation_checkpointing: True \(YAML reads yes/no/on/off/true/false "
                                          r"as a boolean\) is not one of 'none', 'selective', 'full'"):
        load_recipe(resolve_recipe("stage1_tiny_cpu"), ["model.activation_checkpointing=yes"])


def test_a_near_miss_gets_a_suggestion():
    with pytest.raises(RecipeError, match=r"train.precision: 'bf61' is not one of .*did you mean 'bf16'"):
        load_recipe(resolve_recipe("stage1_tiny_cpu"), ["train.precision=bf61"])
    with pytest.raises(RecipeError, match=r"train.parallel: 'fdsp' .*did you mean 'fsdp'"):
        load_recipe(resolve_recipe("stage1_tiny_cpu"), ["train.parallel=fdsp"])
    with pytest.raises(RecipeError, match="model.preset 'So61' .*did you mean 'So16'"):
        load_recipe(resolve_recipe("stage1_tiny_cpu"), ["model.preset=So61"])


def test_the_mllm_schedulers_are_the_trainers_own():
    from transformers.trainer_utils import SchedulerType

    assert set(SCHEDULERS) <= {s.value for s in SchedulerType}


@pytest.mark.parametrize("cls,example", [(Grid, GRID), (PipelineConfig, {"mllm": {}, "eval": {}})])
def test_every_grid_and_pipeline_choice_field_refuses_an_unknown_value(cls, example):
    fields = dict(choice_fields(cls))
    if cls is Grid:
        assert "protocols.*.mode" in fields
    for path in fields:
        values = yaml.safe_load(yaml.safe_dump(example))
        _set(values, path, "bogus_choice")
        with pytest.raises(RecipeError, match="is not one of"):
            build(cls, values)


def test_a_typo_in_a_sweep_grid_is_an_error_not_a_frozen_encoder(tmp_path):
    grid = yaml.safe_load(yaml.safe_dump(GRID))
    grid["protocols"]["unfrozen"] = {"mode": "anyres", "lr_visoin": 2.0e-6}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    with pytest.raises(RecipeError, match=r"unknown key 'protocols.unfrozen.lr_visoin'; did you mean "
                                          r"protocols.unfrozen.lr_vision\?"):
        load_grid(tmp_path / "grid.yaml")
    # through the command: one line, exit 2, and nothing created
    grid["out"] = str(tmp_path / "sweep_out")
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    code, _, err = run_cli("genlip-eval", "sweep", "--grid", str(tmp_path / "grid.yaml"), cwd=tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "lr_visoin" in err, err
    assert not (tmp_path / "sweep_out").exists()


def test_grid_and_pipeline_defaults_are_filled_and_bad_values_refused(tmp_path):
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(GRID))
    g = load_grid(tmp_path / "g.yaml")
    assert g["protocols"]["frozen"]["lr_vision"] == 0.0 and g["eval"]["limit"] is None and g["out"] == "runs/sweep"
    for bad, match in [({**GRID, "suites": ["nope"]}, "unknown suites"), ({**GRID, "llms": {}}, "at least one"),
                       ({**GRID, "protocols": {"f": {"lr_vision": "fast"}}}, "expected float")]:
        (tmp_path / "g.yaml").write_text(yaml.safe_dump(bad))
        with pytest.raises(RecipeError, match=match):
            load_grid(tmp_path / "g.yaml")
    cfg = load_pipeline_config(None)
    assert cfg["stage1"]["recipe"] == "stage1_tiny_cpu" and cfg["eval"]["probe_per_class"] == [40, 20]
    _refused(load_pipeline_config, tmp_path / "p.yaml", "eval: {resampels: 100}\n", "did you mean eval.resamples")
    _refused(load_pipeline_config, tmp_path / "p.yaml", "eval: {suite: [unclosed\n", "not valid YAML")


def test_paper_recipes_are_short_diffs_from_their_bases():
    for kind, names in (("genlip", ["stage1_So16", "stage1_g16", "stage2_So16", "stage2_g16"]),
                        ("mllm", ["finetune_qwen2.5-7b_frozen", "pretrain_qwen2.5-7b"])):
        for name in names:
            text = resolve_recipe(name, kind).read_text()
            lines = [x for x in text.splitlines() if x.strip() and not x.lstrip().startswith("#")]
            assert lines[0].startswith("base: ") and len(lines) <= 16, (name, len(lines))
    s2 = load_recipe(resolve_recipe("stage2_So16"))
    assert s2.model.preset == "So16" and s2.train.global_batch == 264 and s2.data.max_seq_len == 16384
    assert s2.model.init_from == "runs/stage1_So16" and s2.train.output_dir == "runs/stage2_So16"
    g = load_recipe(resolve_recipe("stage1_g16"))
    assert (g.model.preset, g.train.global_batch, g.train.steps, g.optim.warmup_ratio) == ("g16", 49152, 162760, 0.02)
    assert g.model.loss_impl == "chunked" and g.data.image_size == 224  # from the base
    assert set(bundled_names("genlip")) >= {"stage1_L16", "stage1_So16", "stage1_g16", "stage2_L16"}


def test_a_users_recipe_on_a_bundled_base_and_the_one_level_rule(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: stage1_tiny_cpu\ntrain: {steps: 7}\n")
    r = load_recipe(tmp_path / "mine.yaml")
    assert r.train.steps == 7 and r.train.global_batch == 32 and r.name == "genlip-stage1-tiny"
    _refused(read_values, tmp_path / "two.yaml", "base: mine\n", "one level only")
    _refused(load_recipe, tmp_path / "bad.yaml", "base: stage1_Nope\n", "stage1_So16")


def test_a_bad_choice_on_the_command_line_is_one_line_before_anything_runs(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GENLIP_HOME": str(tmp_path / "home")}
    code, _, err = run_cli("genlip-pretrain", "train.precision=bf61", cwd=tmp_path, env=env)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "'bf16'" in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "home").exists()
    code, _, err = run_cli("genlip-mllm", "finetune", "model.mode=anyress", cwd=tmp_path, env=env)
    assert code == 2 and "did you mean 'anyres'" in err, err


@pytest.mark.parametrize("override,words", [
    ("train.steps=-5", "train.steps: -5 is out of range (must be >= 1)"),
    ("train.steps=0", "train.steps: 0 is out of range"),
    ("train.micro_batch=0", "train.micro_batch: 0 is out of range"),
    ("train.precision=fp8", "train.precision: 'fp8' is not one of"),
    ("train.global_batch=33 train.batch_rounding=exact", "train.global_batch 33 does not split over 1 ranks"),
    ("optim.lr=-1", "optim.lr: -1.0 is out of range (must be > 0)"),
    ("data.image_size=50", "data.image_size 50 is not a multiple of the patch size 16"),
    ("checkpoint.resume=.", "is not a checkpoint directory"),
    ("optim.betas=[0.9", "not valid YAML"),
    ("optim.betas=[0.9]", "optim.betas must be two numbers in [0, 1)"),
    ("optim.betas=[0.9,1.5]", "optim.betas must be two numbers in [0, 1) (AdamW's beta1, beta2), got [0.9, 1.5]"),
    ("optim.lr=inf", "optim.lr: inf is out of range (must be a finite number)"),
    ("data.min_image_tokens=100 data.max_image_tokens=64", "data.min_image_tokens 100 is above data.max_image_tokens"),
    ("--recipe stage2_tiny_cpu model.init_from=runs/nosuch", "bad recipe: model.init_from: runs/nosuch: no such "
                                                               "directory"),
])
def test_a_bad_value_is_one_line_and_exit_2_before_anything_is_built(tmp_path, override, words):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GENLIP_HOME": str(tmp_path / "home")}
    code, _, err = run_cli("genlip-pretrain", *override.split(), env=env, cwd=tmp_path,
                           subprocess=override == "train.steps=-5")  # the installed script once; the rest in-process
    assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "home").exists()


def test_overrides_may_follow_options():
    for cmd in (["genlip-pretrain", "--resume", "auto", "train.steps=3", "--print-recipe", "optim.lr=0.5"],
                ["genlip-mllm", "finetune", "--print-recipe", "train.max_steps=3", "--recipe", "finetune_tiny_cpu",
                 "lr.projector=0.5"]):
        code, out, err = run_cli(*cmd)
        assert code == 0, err
        assert ("steps: 3" in out or "max_steps: 3" in out) and ("lr: 0.5" in out or "projector: 0.5" in out), out


def test_a_key_given_twice_in_a_file_is_an_error_not_a_silent_last_one(tmp_path):
    """YAML keeps the last of two equal keys: a second ``lr:`` lower in a recipe, or a grid's encoder given twice
    with two paths, would quietly decide the experiment."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: stage1_tiny_cpu\noptim:\n  lr: 1.0e-3\n  warmup_ratio: 0.1\n  lr: 5.0e-3\n")
    with pytest.raises(RecipeError, match=r"r.yaml: not valid YAML \(line 5, column 3: the key 'lr' is given twice\)"):
        load_recipe(recipe, [])
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump(GRID) + "encoders:\n  other: /x\n")
    with pytest.raises(RecipeError, match="the key 'encoders' is given twice"):
        load_grid(grid)
    recipe.write_text("base: stage1_tiny_cpu\noptim:\n  lr: 1.0e-3\n")
    assert load_recipe(recipe, []).optim.lr == 1.0e-3
    # YAML's merge key still works: a key of the anchor given again beside it overrides it, as YAML says
    grid.write_text(yaml.safe_dump({k: v for k, v in GRID.items() if k != "protocols"}) +
                    "protocols:\n  frozen: &f {mode: resize, lr_vision: 0.0}\n"
                    "  unfrozen: {<<: *f, lr_vision: 2.0e-6}\n")
    assert load_grid(grid)["protocols"]["unfrozen"] == {"mode": "resize", "lr_vision": 2.0e-6}
    recipe.write_text("base: stage1_tiny_cpu\n? [1, 2]\n: 3\n")
    with pytest.raises(RecipeError, match="a list cannot be a key"):
        load_recipe(recipe, [])


def test_a_finished_runs_recipe_is_compared_on_the_keys_both_versions_have(tmp_path):
    """What a finished run saved against the recipe given now: a changed value counts; keys under ``ignore`` do not,
    nor keys only one side has (a key the schema gained or lost between the toolkit's versions)."""
    saved = to_dict(Recipe())
    del saved["optim"]["clip_grad"]  # a run from before the key existed
    saved["optim"]["retired_knob"] = 3  # a key the schema has dropped since
    saved["optim"]["lr"] = 5.0
    saved["log"]["every"] = 99
    f = tmp_path / "recipe.yaml"
    f.write_text(yaml.safe_dump(saved))
    assert changed_since(f, Recipe(), ignore=("log",)) == [f"optim.lr: 5.0 -> {Recipe().optim.lr!r}"]
    assert changed_since(f, Recipe()) == [f"log.every: 99 -> {Recipe().log.every!r}",
                                          f"optim.lr: 5.0 -> {Recipe().optim.lr!r}"]


def test_the_mllm_native_token_budget_must_be_a_range():
    with pytest.raises(RecipeError, match="model.min_image_tokens 100 is above model.max_image_tokens 64"):
        load_recipe(None, ["model.min_image_tokens=100", "model.max_image_tokens=64"], MllmRecipe)


@pytest.mark.parametrize("value", ["0", "-5"])
def test_mllm_max_steps_is_minus_one_or_positive(value):
    """0 trained one step and -5 a whole epoch (found by a user); both are refused, -1 (epochs decide) and N pass."""
    with pytest.raises(RecipeError, match=rf"train.max_steps: {value} is out of range \(-1: train.epochs decides"):
        load_recipe(None, [f"train.max_steps={value}"], MllmRecipe)
    assert [load_recipe(None, [f"train.max_steps={v}"], MllmRecipe).train.max_steps for v in (-1, 3)] == [-1, 3]


def test_list_overrides_and_source_checks_name_the_key():
    """`data.sources.0.path=...` on a recipe without sources said only "has no item 0" (found by a user, following
    genlip-data's own help); it says how to give the list. A source's own check names the source's key."""
    with pytest.raises(RecipeError, match=re.escape(
            "override 'data.sources.0.path': data.sources has no item 0 (it has 0; give the list itself: "
            "data.sources='[...]', e.g. data.sources='[{type: wds, path: \"shards/*.tar\"}]')")):
        load_recipe(None, ["data.sources.0.path=x.tar"], Recipe)
    recipe = load_recipe(None, ['data.sources=[{type: wds, path: "shards/*.tar"}]'], Recipe)  # the form it gives
    assert recipe.data.sources[0].path == "shards/*.tar"
    with pytest.raises(RecipeError, match=re.escape("data.sources.1: source weight must be positive and finite, "
                                                    "got -1.0")):
        load_recipe(None, ["data.sources=[{path: a.tar}, {path: b.tar, weight: -1}]"], Recipe)
