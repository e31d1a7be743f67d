"""Installs without the optional extras: ``pip install genlip-toolkit`` alone runs the encoder commands, and a command
or setting whose package is missing says what to install in one line (exit code 2) instead of a traceback. The
packages are hidden from a fresh interpreter (``sys.modules[name] = None``: an import fails as if it were not
installed, and ``importlib.util.find_spec`` answers None), then the console script's own entry point runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).parent / "recipes"
# every package of every extra, by module name (pyproject.toml's optional-dependencies)
EXTRAS = ("peft", "accelerate", "deepspeed", "lmms_eval", "datasets", "pandas", "matplotlib", "tabulate",
          "pycocoevalcap", "timm", "tensorboard", "tensorboardX", "open_clip", "wandb")
ENTRY = {"genlip-pretrain": "genlip.train.cli", "genlip-data": "genlip.data.cli", "genlip-mllm": "mllm.cli",
         "genlip-eval": "eval.cli", "genlip-caption": "genlip.tools.caption", "genlip-analyze": "genlip.tools.analyze",
         "genlip-export": "genlip.tools.export"}
SNIPPET = """import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
prog, module = sys.argv[2], sys.argv[3]
sys.argv = [prog, *sys.argv[4:]]
import importlib
sys.exit(importlib.import_module(module).main())
"""


def _without(hidden, prog, *args, home=None, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if home is not None:
        env["GENLIP_HOME"] = str(home)
    return subprocess.run([sys.executable, "-c", SNIPPET, ",".join(hidden), prog, ENTRY[prog], *args], env=env,
                          capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.parametrize("prog", ["genlip-pretrain", "genlip-data", "genlip-caption", "genlip-analyze",
                                  "genlip-export"])
def test_the_encoder_commands_need_no_extra(prog):
    p = _without(EXTRAS, prog, "--help")
    assert p.returncode == 0 and "usage:" in p.stdout, p.stderr[-2000:]


@pytest.mark.parametrize("prog,hidden,words", [
    ("genlip-mllm", ("peft", "accelerate"), "genlip-mllm: needs the mllm extra, not installed here (missing: peft, "
                                            "accelerate): pip install 'genlip-toolkit[mllm]'"),
    ("genlip-eval", ("lmms_eval",), "genlip-eval: needs the mllm and eval extras, not installed here (missing: "
                                    "lmms-eval): pip install 'genlip-toolkit[mllm,eval]'"),
    ("genlip-eval", EXTRAS, "(missing: peft, accelerate, lmms-eval, datasets, pandas, matplotlib, tabulate, "
                            "pycocoevalcap)")])
def test_a_command_without_its_extra_says_what_to_install(prog, hidden, words):
    p = _without(hidden, prog, "--help")
    assert p.returncode == 2 and p.stdout == "", p.stderr[-2000:]
    assert len(p.stderr.splitlines()) == 1 and words in p.stderr, p.stderr


def test_settings_whose_package_is_missing_are_one_line_before_anything_is_made(tmp_path):
    # train.deepspeed without DeepSpeed: refused with the recipe, before the launcher check and any model
    p = _without(("deepspeed",), "genlip-mllm", "pretrain", "train.deepspeed=zero2", cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.strip() == (
        "genlip-mllm: bad recipe: train.deepspeed: DeepSpeed is not installed; install it built against your torch: "
        "DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed (`make setup` does)"), p.stderr[-2000:]
    # log.wandb_project without wandb: an explicit request, refused before the corpus, the model or the run directory
    p = _without(("wandb",), "genlip-pretrain", "--recipe", str(RECIPES / "tiny_stage1.yaml"),
                 "log.wandb_project=mine", f"train.output_dir={tmp_path / 'run'}", home=tmp_path / "home")
    assert p.returncode == 2 and p.stderr.strip() == ("genlip-pretrain: bad recipe: log.wandb_project=mine: wandb is "
                                                      "not installed (pip install wandb)"), p.stderr[-2000:]
    assert not (tmp_path / "run").exists()
    # TensorBoard, on by default: the run trains and says once where its metrics are instead; without torchvision
    # (the core install has none) transformers' image processor does not announce its fallback at every start, and
    # the checkpoint's processor file names the class that loads with or without it
    p = _without(("tensorboard", "tensorboardX", "torchvision"), "genlip-pretrain", "--recipe",
                 str(RECIPES / "tiny_stage1.yaml"), "train.steps=1", "checkpoint.every=1", "log.tensorboard=true",
                 f"train.output_dir={tmp_path / 'run'}", home=tmp_path / "home")
    assert p.returncode == 0, p.stderr[-2000:]
    said = [x for x in p.stdout.splitlines() if x.startswith("log.tensorboard:")]
    assert said == [f"log.tensorboard: tensorboard is not installed, so no TensorBoard events; the metrics are in "
                    f"{tmp_path / 'run' / 'metrics.jsonl'} (pip install tensorboard, or log.tensorboard=false)"]
    assert not (tmp_path / "run" / "tensorboard").exists() and (tmp_path / "run" / "metrics.jsonl").stat().st_size
    assert "torchvision" not in p.stdout + p.stderr, p.stderr[-2000:]
    saved = json.loads((tmp_path / "run" / "checkpoints" / "step_00000001" / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "SiglipImageProcessor" and saved["resample"] == 2
    # the tools extra: genlip-export timm needs timm (one line, nothing written); genlip-analyze sink writes its
    # numbers without matplotlib and says that the chart is missing
    p = _without(("timm",), "genlip-export", "timm", "--model", str(tmp_path / "run"), "--out", str(tmp_path / "t"))
    assert p.returncode == 2 and p.stderr.startswith("genlip-export timm: needs the tools extra, not installed here "
                                                     "(missing: timm)") and not (tmp_path / "t").exists(), p.stderr
    images = tmp_path / "images"
    images.mkdir()
    from tests.datagen import png

    for i in range(2):
        (images / f"{i}.png").write_bytes(png((40 * i, 90, 160)))
    p = _without(("matplotlib",), "genlip-analyze", "sink", "--model", str(tmp_path / "run"), "--images",
                 str(images), "--out", str(tmp_path / "sink"), "--max-new-tokens", "2")
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.splitlines()[-1] == (f"wrote {tmp_path / 'sink' / 'sink.json'} (2 images); no sink.png: matplotlib "
                                         "is not installed (pip install 'genlip-toolkit[tools]')")
    assert [f.name for f in (tmp_path / "sink").iterdir()] == ["sink.json"]


def test_mllm_report_to_or_deepspeed_without_its_package_is_a_recipe_error(monkeypatch):
    from genlip.run.config import RecipeError
    from mllm import train as T
    from mllm.recipe import MllmRecipe

    recipe = MllmRecipe()
    recipe.train.report_to = ["tensorboard"]
    T.check_packages(recipe)  # installed here
    monkeypatch.setattr(T, "installed", lambda module: module == "tensorboardX")
    T.check_packages(recipe)  # transformers' callback takes tensorboardX too
    monkeypatch.setattr(T, "installed", lambda module: False)
    with pytest.raises(RecipeError, match=r"^train.report_to: tensorboard is not installed \(pip install tensorb"):
        T.check_packages(recipe)
    recipe.train.report_to = []
    T.check_packages(recipe)
    recipe.train.deepspeed = "zero2"
    with pytest.raises(RecipeError, match=r"^train.deepspeed: DeepSpeed is not installed"):
        T.check_packages(recipe)


def test_imported_by_other_code_a_missing_extra_is_an_import_error_and_python_m_is_the_program():
    code = ("import sys\nsys.modules['peft'] = None\ntry:\n    import mllm.cli\nexcept ImportError as e:\n"
            "    print('ImportError', e)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.startswith("ImportError genlip-mllm needs the mllm extra"), p.stderr[-2000:]
    code = ("import runpy, sys\nsys.modules['lmms_eval'] = None\nsys.argv = ['x', '--help']\n"
            "runpy.run_module('eval.cli', run_name='__main__')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.startswith("genlip-eval: needs the mllm and eval extras"), p.stderr[-2000:]
