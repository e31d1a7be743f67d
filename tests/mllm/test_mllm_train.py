"""``genlip-mllm`` through its real entry points: pretrain -> finetune on generated data, frozen vs unfrozen tower,
LoRA, resume, and DeepSpeed ZeRO-2 / ZeRO-3 with two CPU processes."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from genlip.run.config import RecipeError, load_recipe
from mllm.image_modes import default_pinpoints
from mllm.recipe import MllmRecipe
from tests.cli import free_port, run_cli
from tests.mllm_fixtures import make_llm, make_towers

RECIPES = Path(__file__).parents[1] / "recipes"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    towers = make_towers(tmp_path_factory.mktemp("towers"))
    e = {**os.environ, "GENLIP_HOME": str(home), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
         "TORCH_EXTENSIONS_DIR": str(home / "ext")}
    return e, towers


def run(env, stage, out, *overrides, torchrun=0, check=True, extra_env=None):
    e = {**env[0], **(extra_env or {})}
    launch = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(torchrun), "--master_port",
               free_port()] if torchrun else [sys.executable])
    cmd = launch + ["-m", "mllm.cli", stage, "--recipe", str(RECIPES / f"mllm_{stage}.yaml"),
                    f"train.output_dir={out}", *overrides]
    p = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=900)
    if check and p.returncode:
        raise AssertionError(f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    return p


def weights(d: Path, prefix: str) -> dict:
    """Parameters of a saved MLLM under their in-memory names (transformers renames some keys on disk)."""
    from mllm.build import load_mllm

    sd = load_mllm(d)[0].state_dict()
    return {k: v for k, v in sd.items() if k.startswith(prefix)}


def losses(final: Path) -> list[float]:
    return [r["loss"] for r in json.loads((final / "log_history.json").read_text()) if "loss" in r]


@pytest.fixture(scope="module")
def aligned(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "run"
    run(env, "pretrain", out, f"model.vision={env[1]['genlip']}")
    return out / "final"


@pytest.fixture(scope="module")
def finetuned(env, aligned, tmp_path_factory):
    """The test recipe's instruction tuning in one process with its defaults: the reference several tests compare
    against (its ``final/``)."""
    out = tmp_path_factory.mktemp("ft") / "run"
    run(env, "finetune", out, f"model.init_from={aligned}")
    return out / "final"


def test_pretrain_trains_the_projector_only(env, aligned):
    tower = load_file(str(env[1]["genlip"] / "model.safetensors"))
    vt = weights(aligned, "model.vision_tower.")
    assert len(vt) == len(tower) and all(torch.equal(vt[f"model.vision_tower.{k}"], v) for k, v in tower.items())
    assert len(losses(aligned)) == 4
    assert (aligned / "genlip_mllm_image.json").exists() and (aligned / "tokenizer.json").exists()
    for f in ("genlip_mllm_image.json", "processor_config.json", "tokenizer.json"):
        assert (aligned.parent / "checkpoint-2" / f).exists(), f"checkpoints carry the processor: {f}"


def test_finetune_frozen_tower_is_bit_identical_and_llm_changes(env, aligned, finetuned):
    final = finetuned
    before, after = weights(aligned, "model.vision_tower."), weights(final, "model.vision_tower.")
    assert all(torch.equal(before[k], after[k]) for k in before)
    lm0, lm1 = weights(aligned, "model.language_model."), weights(final, "model.language_model.")
    assert any(not torch.equal(lm0[k], lm1[k]) for k in lm0)
    from mllm.build import load_mllm
    from mllm.chat import answer, load_image

    model, tok, spec, ip = load_mllm(final)
    img = sorted((Path(env[0]["GENLIP_HOME"]) / "sft-n48-s0" / "images").glob("*.png"))[0]
    reply = answer(model, tok, spec, ip, load_image(str(img)), "What word is written in the image?", 5)
    p = subprocess.run([sys.executable, "-m", "mllm.cli", "chat", "--model", str(final), "--image", str(img),
                        "--prompt", "What word is written in the image?", "--max-new-tokens", "5"],
                       env=env[0], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    printed = p.stdout.strip().splitlines()
    assert (printed[-1] if printed else "") == reply, "the CLI answers exactly as the Python API does"


def test_unfrozen_tower_changes(env, aligned, tmp_path):
    out = tmp_path / "ft"
    run(env, "finetune", out, f"model.init_from={aligned}", "lr.vision_tower=1e-3")
    before, after = weights(aligned, "model.vision_tower."), weights(out / "final", "model.vision_tower.")
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("launch", ["single", "zero3x2"])
def test_lora_trains_saves_and_reloads(env, aligned, tmp_path, launch):
    """One process, and LoRA under ZeRO-3 on two (its parameters are shards until gathered for saving and merging):
    the adapter holds full tensors, loads with PEFT, and base + adapter equals the merged model."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from mllm.build import load_mllm

    out = tmp_path / "lora"
    extra = ["train.deepspeed=zero3"] if launch == "zero3x2" else []
    p = run(env, "finetune", out, f"model.init_from={aligned}", "lora.enabled=true", "lora.r=4", *extra,
            torchrun=2 if launch == "zero3x2" else 0)
    assert "FutureWarning" not in p.stderr, p.stderr[-2000:]  # nothing a user could act on
    assert (out / "lora_adapter" / "adapter_config.json").exists()
    adapter = load_file(str(out / "lora_adapter" / "adapter_model.safetensors"))
    assert adapter and all(v.numel() > 0 for v in adapter.values()), "adapter tensors saved as empty shards"
    # the same tensors as the model it started from: no second copy of the tied output layer (ZeRO-3 saved one)
    assert set(load_file(str(out / "final" / "model.safetensors"))) == set(
        load_file(str(aligned / "model.safetensors")))
    merged = weights(out / "final", "model.language_model.")
    base = weights(aligned, "model.language_model.")
    assert any(not torch.equal(merged[k], base[k]) for k in base), "the adapters changed the LLM"
    model, *_ = load_mllm(aligned)
    reloaded = PeftModel.from_pretrained(model, out / "lora_adapter").merge_and_unload()
    sd = reloaded.state_dict()
    for k, v in merged.items():
        torch.testing.assert_close(sd[k], v, atol=1e-6, rtol=1e-5)
    proj = weights(out / "final", "model.multi_modal_projector.")
    proj0 = weights(aligned, "model.multi_modal_projector.")
    assert any(not torch.equal(proj[k], proj0[k]) for k in proj0), "the projector trains under LoRA too"


def test_resume_continues_to_the_same_weights(env, aligned, finetuned, tmp_path):
    part = tmp_path / "part"
    run(env, "finetune", part, f"model.init_from={aligned}", "debug.stop_after_step=2")
    assert (part / "checkpoint-2").exists() and not (part / "final").exists()
    run(env, "finetune", part, f"model.init_from={aligned}")  # resume=auto picks up checkpoint-2
    a, b = weights(finetuned, "model."), weights(part / "final", "model.")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_zero2_and_zero3_with_two_processes_match(env, aligned, finetuned, tmp_path):
    curves = {}
    for stage in ("zero2", "zero3"):
        out = tmp_path / stage
        run(env, "finetune", out, f"model.init_from={aligned}", f"train.deepspeed={stage}",  # bundled, by name
            torchrun=2)
        curves[stage] = losses(out / "final")
        assert (out / "final" / "model.safetensors").exists()
    assert len(curves["zero2"]) == 4
    assert curves["zero2"] == pytest.approx(curves["zero3"], rel=1e-4)
    assert losses(finetuned) == pytest.approx(curves["zero2"], rel=1e-3)  # one process


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_preemption_signal_to_the_process_group_saves_a_checkpoint_and_resumes(env, aligned, tmp_path, sig):
    """SIGTERM to the whole process group, loader workers included: the trainer saves after its current step and
    exits 0 without a final model; train.resume=auto then finishes the run. Ctrl-C (SIGINT) does the same and exits
    130, without a traceback."""
    import signal

    out = tmp_path / "pre"
    cmd = [sys.executable, "-m", "mllm.cli", "finetune", "--recipe", str(RECIPES / "mllm_finetune.yaml"),
           f"train.output_dir={out}", f"model.init_from={aligned}", "train.max_steps=40", "train.save_steps=100",
           "train.logging_steps=1", "data.num_workers=2"]
    proc = subprocess.Popen(cmd, env=env[0], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    for line in proc.stdout:  # the Trainer logs every step: signal once training is under way
        seen.append(line)
        if "'loss'" in line:
            break
    os.killpg(proc.pid, getattr(signal, sig))
    rest, _ = proc.communicate(timeout=600)
    log = "".join(seen) + rest
    assert proc.returncode == (130 if sig == "SIGINT" else 0) and "Traceback" not in log, log[-3000:]
    ckpts = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    said = "interrupted: saved" if sig == "SIGINT" else "pre-empted: saved"
    assert said in log and ckpts and int(ckpts[-1].name.split("-")[1]) < 40, log[-3000:]
    assert not (out / "final").exists()
    if sig == "SIGINT":  # the checkpoint is the same kind as SIGTERM's, whose resume follows
        return
    run(env, "finetune", out, f"model.init_from={aligned}", "train.max_steps=40", "train.save_steps=100",
        "data.num_workers=2")
    assert json.loads((out / "final" / "log_history.json").read_text())[-1]["step"] == 40


def test_samples_dropped_in_training_are_counted_by_reason(env, tmp_path):
    """A corrupt image file (present, so the record passes when the data opens) and a conversation that truncation
    would cut through its image: both dropped from their batches (in a loader worker) and counted in
    ``final/skipped.json`` under the reasons SkipSample and the encoder give them."""
    from PIL import Image

    root = tmp_path / "data"
    root.mkdir()
    for i in range(14):
        Image.new("RGB", (32, 32), (18 * i, 0, 255 - 18 * i)).save(root / f"{i}.png")
    (root / "corrupt.png").write_bytes(b"these bytes are not an image")
    qa = [{"from": "human", "value": "<image>\ndescribe the image."}, {"from": "gpt", "value": "a red square"}]
    records = [{"image": f"{i}.png", "conversations": qa} for i in range(13)]
    records.append({"image": "13.png", "conversations": [qa[0], {"from": "gpt", "value": "a red square " * 60}]})
    records.append({"image": "corrupt.png", "conversations": qa})
    records.append({"image": "0.png", "conversations": [{"from": "human", "value": "describe the image " * 60 +
                                                          "<image>"}, {"from": "gpt", "value": "a red square"}]})
    (root / "d.json").write_text(json.dumps(records))
    out = tmp_path / "ft"
    # the test recipe generates its data (data.synth): a data.path given beside it is what trains, and it says so
    p = run(env, "finetune", out, f"model.vision={env[1]['genlip']}", f"model.llm={make_llm(tmp_path / 'llm')}",
            "model.mode=resize", "model.image_size=32", f"data.path={root / 'd.json'}",
            f"data.image_root={root}", "data.max_length=96", "data.num_workers=1", "train.max_steps=2",
            "train.global_batch=8", "train.micro_batch=8")
    assert f"data: {root / 'd.json'} (the recipe's generated data.synth sets are not used)" in p.stdout
    assert json.loads((out / "final" / "skipped.json").read_text()) == {
        "records": {}, "training": {"corrupt_image": 1, "too_long": 1}, "cut_samples": 1}
    last = [r for r in json.loads((out / "final" / "log_history.json").read_text()) if "loss" in r][-1]
    assert (last["skipped_samples"], last["skipped_corrupt_image"], last["skipped_too_long"]) == (2, 1, 1)
    # the long answer's conversation was cut to data.max_length and trained on: counted, and said at the end
    assert last["cut_samples"] == 1 and "samples cut to data.max_length=96 (trained on what fits): 1" in p.stdout


@pytest.mark.parametrize("key", ["vision", "llm"])
def test_missing_model_directory_is_one_line_and_exit_2(env, tmp_path, key):
    given = {"vision": f"model.vision={env[1]['genlip']}", "llm": "model.llm=tiny"}
    given[key] = f"model.{key}=/no/such/dir"
    code, _, err = run_cli("genlip-mllm", "pretrain", "--recipe", str(RECIPES / "mllm_pretrain.yaml"),
                           *given.values(), f"train.output_dir={tmp_path / 'out'}", subprocess=key == "vision",
                           env={**os.environ, "HF_HUB_OFFLINE": "1", "GENLIP_HOME": str(tmp_path / "home")})
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0] == f"genlip-mllm: bad recipe: model.{key}: /no/such/dir: no such directory"
    assert not (tmp_path / "home").exists(), "checked before any data is generated"


def test_compiled_llm_layers_train_the_same_weights(env, aligned, tmp_path):
    """train.compile=true compiles each LLM decoder layer (inductor runs on the CPU too): the same losses and weights
    as eager within float rounding, checkpoint names unchanged; with ZeRO-3 it is refused in one line."""
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    run(env, "finetune", eager, f"model.init_from={aligned}", "train.gradient_checkpointing=true")
    p = run(env, "finetune", compiled, f"model.init_from={aligned}", "train.gradient_checkpointing=true",
            "train.compile=true")
    assert "compiled 2 LLM decoder layers" in p.stdout
    assert losses(compiled / "final") == pytest.approx(losses(eager / "final"), rel=1e-4)
    a, b = weights(eager / "final", "model."), weights(compiled / "final", "model.")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    p = run(env, "finetune", tmp_path / "z3", f"model.init_from={aligned}", "train.deepspeed=zero3",
            "train.compile=true", check=False)
    assert p.returncode == 2 and "train.compile=true is not supported with ZeRO-3" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


@pytest.mark.parametrize("launch", ["single", "ddp2"])
def test_chunked_lm_loss_trains_like_the_models_own(env, aligned, finetuned, tmp_path, launch):
    """train.loss_impl=chunked (the LM head on supervised positions only, no [tokens, vocab] logits) gives the
    model's own loss and weights, also with two processes (the Trainer's per-device normalisation, gradient
    accumulation 1 with micro-batch 4 of 8); refused with ZeRO-3 in one line."""
    n = 2 if launch == "ddp2" else 0
    ref, got = finetuned, tmp_path / "chunked"
    if n:
        ref = tmp_path / "plain" / "final"
        run(env, "finetune", ref.parent, f"model.init_from={aligned}", torchrun=n)
    run(env, "finetune", got, f"model.init_from={aligned}", "train.loss_impl=chunked", torchrun=n)
    assert losses(got / "final") == pytest.approx(losses(ref), rel=1e-5)
    a, b = weights(ref, "model."), weights(got / "final", "model.")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    if launch == "single":
        p = run(env, "finetune", tmp_path / "z3", f"model.init_from={aligned}", "train.deepspeed=zero3",
                "train.loss_impl=chunked", check=False)
        assert p.returncode == 2 and "train.loss_impl=chunked is not supported with ZeRO-3" in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_chunked_lm_loss_enters_bf16_itself_outside_the_models_autocast():
    """The Trainer calls compute_loss_func outside the model's autocast, on fp32 master weights: with bf16 on, every
    LM-head GEMM of the chunked loss (forward and backward) still runs in bf16; with it off, in fp32. Both equal the
    plain cross-entropy of the same logits within the dtype's rounding."""
    from types import SimpleNamespace

    from transformers import Qwen2Config, Qwen2ForCausalLM

    from mllm.train import chunked_lm_loss
    from tests.dispatch import MatmulDtypes

    torch.manual_seed(0)
    llm = Qwen2ForCausalLM(Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=1))
    ids = torch.randint(0, 96, (2, 12))
    labels = ids.clone()
    labels[:, :4] = -100
    n = int((labels[:, 1:] != -100).sum())
    ref = torch.nn.functional.cross_entropy(llm(ids).logits[:, :-1].reshape(-1, 96), labels[:, 1:].reshape(-1),
                                            reduction="sum") / n
    h = llm(ids, output_hidden_states=True, logits_to_keep=1).hidden_states[-1].detach()
    for bf16, dtype, tol in ((True, torch.bfloat16, 2e-2), (False, torch.float32, 1e-5)):
        out = SimpleNamespace(hidden_states=(h.clone().requires_grad_(),))  # the loss's own graph only
        with MatmulDtypes() as rec:
            loss = chunked_lm_loss(llm, bf16)(out, labels, n)
            loss.backward()
        assert len(rec.seen) == 4 and all(d == dtype for dts in rec.seen for d in dts), (bf16, rec.seen)
        assert float(loss) == pytest.approx(float(ref), rel=tol)
    with pytest.raises(RuntimeError, match="needs num_items_in_batch"):
        chunked_lm_loss(llm, False)(out, labels)


def test_a_finished_run_given_another_recipe_is_refused_naming_the_keys(env, aligned, finetuned):
    """A finished run given again says so; given a recipe that trains something else it would pass the old model off
    as the new one: one line naming each changed key, exit 2. Keys of how a run executes do not count."""
    again = run(env, "pretrain", aligned.parent, f"model.vision={env[1]['genlip']}")  # llm=tiny, as it was saved
    assert "already finished" in again.stdout, again.stderr[-2000:]
    again = run(env, "finetune", finetuned.parent, f"model.init_from={aligned}", "train.logging_steps=3",
                "train.save_steps=5", "data.num_workers=1")
    assert "already finished" in again.stdout, again.stderr[-2000:]
    before = sorted(p.name for p in finetuned.parent.iterdir())
    p = run(env, "finetune", finetuned.parent, f"model.init_from={aligned}", "lr.vision_tower=2e-6",
            "train.max_steps=8", check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert lines[0].startswith(f"genlip-mllm: bad recipe: {finetuned} is a finished run of another recipe (")
    assert "lr.vision_tower: 0.0 -> 2e-06" in lines[0] and "train.max_steps: 4 -> 8" in lines[0]
    assert "train.resume=none" in lines[0] and "logging_steps" not in lines[0]
    assert sorted(p.name for p in finetuned.parent.iterdir()) == before


@pytest.mark.parametrize("case", ["missing", "run_dir", "with_vision", "with_mode"])
def test_init_from_mistakes_are_one_line_before_anything_is_made(env, aligned, tmp_path, case):
    init = {"missing": "/no/such/run/final", "run_dir": str(aligned.parent)}.get(case, str(aligned))
    extra = {"with_vision": [f"model.vision={env[1]['siglip']}"],
             "with_mode": ["model.mode=anyres", "model.feature_layer=-2"]}.get(case, [])
    code, out, err = run_cli("genlip-mllm", "finetune", "--recipe", str(RECIPES / "mllm_finetune.yaml"),
                             f"model.init_from={init}", *extra, f"train.output_dir={tmp_path / 'out'}",
                             env={**os.environ, "HF_HUB_OFFLINE": "1", "GENLIP_HOME": str(tmp_path / "home")},
                             subprocess=case == "run_dir")  # the installed script once; the rest in this process
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    want = {"missing": f"model.init_from: {init}: no such directory (a previous stage's output_dir/final: run that "
                       "stage first, e.g. `genlip-mllm pretrain`)",
            "run_dir": f"model.init_from: {init}: not a saved MLLM (no genlip_mllm_image.json); did you mean "
                       f"{aligned}?",
            "with_vision": f"model.vision={env[1]['siglip']} would be ignored: the model, its tower and LLM included, "
                           f"comes from model.init_from={init}; give one or the other",
            "with_mode": f"model.mode=anyres, model.feature_layer=-2 would be ignored: the image settings come with "
                         f"model.init_from={init} (mode=resize, feature_layer=-1); leave them out or give those "
                         "values"}[case]
    assert lines[0] == f"genlip-mllm: bad recipe: {want}"
    assert out == ""  # nothing before it either (the batch plan was printed first)
    assert not (tmp_path / "home").exists() and not (tmp_path / "out").exists()


def test_a_finetune_records_the_image_settings_it_inherits(aligned, tmp_path):
    """The settings a recipe leaves at their defaults take the init_from model's values (an anyres model stays
    anyres): the recipe the run saves describes the model it trained, and a finished run compares equal to it."""
    from mllm.train import with_init_settings

    other = tmp_path / "anyres"
    other.mkdir()
    shutil.copy(aligned / "config.json", other / "config.json")
    spec = json.loads((aligned / "genlip_mllm_image.json").read_text())
    (other / "genlip_mllm_image.json").write_text(json.dumps({**spec, "mode": "anyres", "image_size": 48,
                                                             "pinpoints": default_pinpoints(48, 3)}))
    recipe = load_recipe(RECIPES / "mllm_finetune.yaml", [f"model.init_from={other}"], MllmRecipe)
    assert recipe.model.mode == "resize" and recipe.model.image_size is None and recipe.model.max_grid == 2
    filled = with_init_settings(recipe)
    assert (filled.model.mode, filled.model.image_size, filled.model.max_grid, recipe.model.mode) == (
        "anyres", 48, 3, "resize")
    # --print-recipe shows what the run takes from the model; a setting asked for that the model has not is refused
    args = ["finetune", "--recipe", str(RECIPES / "mllm_finetune.yaml"), f"model.init_from={other}", "--print-recipe"]
    code, out, _ = run_cli("genlip-mllm", *args)
    model = yaml.safe_load(out)["model"]
    assert code == 0 and (model["mode"], model["image_size"], model["max_grid"]) == ("anyres", 48, 3), out
    code, out, err = run_cli("genlip-mllm", *args, "model.max_grid=4")
    assert code == 2 and out == "" and err.strip() == (
        f"genlip-mllm: bad recipe: model.max_grid=4 would be ignored: the image settings come with model.init_from="
        f"{other} (max_grid=3); leave them out or give those values"), err
    # given again, the same recipe is the finished run: as this version saves it, as earlier versions saved it (the
    # defaults), and after init_from was deleted; a value asked for that is not the recorded one is a change
    from genlip.run.config import save_recipe
    from mllm.train import finished_changes

    out = tmp_path / "ft"
    (out / "final").mkdir(parents=True)
    recipe.train.output_dir = filled.train.output_dir = str(out)
    for saved in (filled, recipe):
        save_recipe(saved, out / "final" / "recipe.yaml")
        assert finished_changes(recipe) == [], saved.model.mode
    shutil.rmtree(other)
    assert finished_changes(recipe) == []
    asked = load_recipe(RECIPES / "mllm_finetune.yaml", [f"model.init_from={other}", "model.feature_layer=-2",
                                                         f"train.output_dir={out}"], MllmRecipe)
    assert finished_changes(asked) == ["model.feature_layer: -1 -> -2"]
    assert finished_changes(asked, ("model.feature_layer",)) == []


AUTO = {k: "auto" for k in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")}


@pytest.mark.parametrize("config, want", [
    ('{"zero_optimization": {"stage": 2},', "not valid JSON ("),  # then json's own words, line and column
    ("[1, 2]", "a DeepSpeed config is a JSON object, got list"),
    (json.dumps({"zero_optimization": {"stage": 7}, **AUTO}), "zero_optimization.stage must be 0, 1, 2 or 3, got 7"),
    (json.dumps({"zero_optimization": {"stage": "2"}, **AUTO}),
     "zero_optimization.stage must be 0, 1, 2 or 3, got '2'"),
    (json.dumps({"zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True,
                 "train_batch_size": "auto"}),
     "set 'train_micro_batch_size_per_gpu', 'gradient_accumulation_steps' to \"auto\""),
    (json.dumps({"zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True, **AUTO,
                 "optimizer": {"type": "AdamW"}}), "remove 'optimizer': the recipe's AdamW"),
])
def test_own_deepspeed_configs_are_checked_when_the_recipe_loads(tmp_path, config, want):
    """A DeepSpeed JSON of the user's own that the trainer cannot run is one line at load (exit code 2 through the
    commands), not a traceback on every rank after the models are loaded."""
    path = tmp_path / "ds.json"
    path.write_text(config)
    with pytest.raises(RecipeError, match=re.escape(f"train.deepspeed: {path}: {want}")):
        load_recipe(None, [f"train.deepspeed={path}"], MllmRecipe)
    ok = tmp_path / "ok.json"  # LLaVA's own zero3.json has no zero_allow_untested_optimizer: DeepSpeed knows AdamW
    ok.write_text(json.dumps({"zero_optimization": {"stage": 3}, **AUTO}))
    assert load_recipe(None, [f"train.deepspeed={ok}"], MllmRecipe).train.deepspeed == str(ok)


@pytest.mark.parametrize("overrides, want", [
    (["data.path=/no/such.json"], "data.path: /no/such.json: no such file (a LLaVA JSON or JSONL file)"),
    (["data.synth=null"], "no data: set data.path (a LLaVA JSON or JSONL file) or data.synth"),
    (["data.synth=null", "data.path={json}"], "model.llm=tiny is the small LLM made with the generated data's "
                                              "tokenizer, which needs data.synth; point model.llm at an LLM "
                                              "directory instead"),
])
def test_data_mistakes_are_one_line_before_anything_is_made(env, tmp_path, overrides, want):
    (tmp_path / "d.json").write_text("[]")
    code, out, err = run_cli("genlip-mllm", "pretrain", "--recipe", str(RECIPES / "mllm_pretrain.yaml"),
                             f"model.vision={env[1]['genlip']}",
                             *[o.format(json=tmp_path / "d.json") for o in overrides],
                             f"train.output_dir={tmp_path / 'out'}", subprocess=overrides == ["data.synth=null"],
                             env={**os.environ, "HF_HUB_OFFLINE": "1", "GENLIP_HOME": str(tmp_path / "home")})
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0] == f"genlip-mllm: bad recipe: {want}"
    assert out == ""  # nothing before it either (the batch plan was printed first)
    assert not (tmp_path / "home").exists() and not (tmp_path / "out").exists()


def test_training_again_sets_the_earlier_run_aside(env, aligned, finetuned, tmp_path):
    """``train.resume=none`` where a finished run is: its checkpoints and final/ move to replaced-*/, so neither a
    resume of the new run nor its rotation of checkpoints can take them for its own."""
    out = tmp_path / "ft"
    shutil.copytree(finetuned.parent, out)
    old = sorted(p.name for p in out.iterdir())
    p = run(env, "finetune", out, f"model.init_from={aligned}", "train.resume=none", "train.max_steps=2")
    assert "starting over (train.resume=none): the earlier run's files moved to " in p.stdout, p.stdout[-2000:]
    aside = [d for d in out.iterdir() if d.name.startswith("replaced-")]
    assert len(aside) == 1 and sorted(q.name for q in aside[0].iterdir()) == old
    assert sorted(d.name for d in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert len(losses(out / "final")) == 2 and len(losses(aside[0] / "final")) == 4
