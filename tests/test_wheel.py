"""A regular (non-editable) install works outside the repository: the wheel carries the recipes and DeepSpeed
configs, and the console scripts find them by name from any working directory.

The wheel is built without network (``--no-build-isolation``, the locked setuptools) and installed into a fresh
virtual environment that reuses the locked dependencies of the running one (a ``.pth`` line) instead of installing
several GB of wheels again; the project itself comes only from the wheel."""

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy of the tracked tree, so the build leaves nothing in the checkout
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            (src / f).write_bytes((ROOT / f).read_bytes())
    dist = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(src)], check=True, capture_output=True, text=True)
    (wheel,) = dist.glob("genlip_toolkit-*.whl")
    env_dir = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "_locked_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, text=True)
    work = tmp / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(GENLIP_HOME=str(tmp / "home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return wheel, env_dir / "bin", work, env


def test_the_wheel_carries_recipes_and_deepspeed_configs(venv):
    wheel = venv[0]
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("recipes/genlip/stage1_tiny_cpu.yaml", "recipes/genlip/stage2_So16.yaml",
              "recipes/mllm/finetune_tiny_cpu.yaml", "recipes/mllm/deepspeed/zero2.json",
              "recipes/mllm/deepspeed/zero3.json", "recipes/pipeline/cpu_compare.yaml"):
        assert f in names, f


def test_installed_commands_find_bundled_recipes_from_any_directory(venv):
    _, bin_dir, work, env = venv
    where = subprocess.run([str(bin_dir / "python"), "-c", "import genlip, recipes; print(genlip.__file__); "
                            "print(recipes.__file__)"], cwd=work, env=env, capture_output=True, text=True, check=True)
    assert all(str(bin_dir.parent) in line for line in where.stdout.split()), where.stdout  # not the checkout
    p = subprocess.run([str(bin_dir / "genlip-pretrain"), "--print-recipe"], cwd=work, env=env, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    assert "name: genlip-stage1-tiny" in p.stdout
    p = subprocess.run([str(bin_dir / "genlip-mllm"), "finetune", "--print-recipe", "train.deepspeed=zero2"],
                       cwd=work, env=env, capture_output=True, text=True)
    assert p.returncode == 0 and f"{bin_dir.parent}" in p.stdout and "zero2.json" in p.stdout, p.stderr


def test_installed_genlip_pretrain_trains_two_steps(venv):
    _, bin_dir, work, env = venv
    args = [str(bin_dir / "genlip-pretrain"), "train.steps=2", "data.synth.samples=64", "train.global_batch=8",
            "train.micro_batch=8", "log.progress=false", "log.tensorboard=false", "train.output_dir=runs/two"]
    p = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert (work / "runs/two/checkpoints/step_00000002/model.safetensors").exists()
    again = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr[-2000:]
