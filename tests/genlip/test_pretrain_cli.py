"""``genlip-pretrain`` end to end through its real entry points: CLI, torchrun, kill and resume, NaN handling."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from genlip.run import checkpoint as C
from tests.cli import free_port, run_cli

RECIPE = str(Path(__file__).parents[1] / "recipes" / "tiny_stage1.yaml")
RECIPE2 = str(Path(__file__).parents[1] / "recipes" / "tiny_stage2.yaml")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("genlip_home")


def _env(home, **extra):
    env = {**os.environ, "GENLIP_HOME": str(home), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}
    env.update(extra)
    return env


def _run(home, out, *overrides, torchrun=0, env=None, check=True, recipe=RECIPE):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(torchrun),
                "--master_port", free_port()] if torchrun else [sys.executable]
    cmd = launcher + ["-m", "genlip.train.cli", "--recipe", recipe, f"train.output_dir={out}", *overrides]
    p = subprocess.run(cmd, env=env or _env(home), capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def _refused(home, out, *overrides, recipe=RECIPE) -> tuple[int, str]:
    """``genlip-pretrain`` with a recipe it refuses before anything is built, in this process (tests.cli):
    (exit code, stderr)."""
    code, _, err = run_cli("genlip-pretrain", "--recipe", recipe, f"train.output_dir={out}", *overrides,
                           env=_env(home))
    return code, err


def _losses(run_dir) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        out.setdefault(row["step"], []).append(row["loss"])
    return out


@pytest.fixture(scope="module")
def reference_run(home, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    p = _run(home, out)
    # the CPU run saves checkpoints without DeepSpeed (imported by accelerate) warning that it found no GPU
    assert "Setting accelerator to CPU" not in p.stdout + p.stderr
    # the generated corpus with its own tokenizer: nothing to warn about (said only beside one's own sources)
    assert "data.tokenizer=auto" not in p.stdout + p.stderr, p.stdout[-2000:]
    return out


def test_run_learns_and_final_weights_load(reference_run):
    losses = _losses(reference_run)
    assert sorted(losses) == list(range(1, 13))
    assert losses[12][0] < losses[1][0] - 0.5, losses
    ckpts = sorted((reference_run / "checkpoints").glob("step_*"))
    assert [c.name for c in ckpts] == ["step_00000008", "step_00000012"], "keep the last 2"
    final = ckpts[-1]
    state = json.loads((final / "trainer_state.json").read_text())
    assert state["step"] == 12 and state["samples"] == 96
    assert "optim" in (final / "recipe.yaml").read_text()

    from transformers import AutoModelForImageTextToText, AutoTokenizer

    import genlip  # noqa: F401

    model = AutoModelForImageTextToText.from_pretrained(final).eval()
    tok = AutoTokenizer.from_pretrained(final)
    assert model.config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    prompt = tok("Describe the image in detail.").input_ids
    caps = model.caption(torch.zeros(1, 3, 32, 32), prompt, max_new_tokens=5)
    assert len(caps[0]) <= 5


def _kill_and_resume(home, out, recipe, *overrides, total):
    cmd = [sys.executable, "-m", "genlip.train.cli", "--recipe", recipe, f"train.output_dir={out}", *overrides]
    proc = subprocess.Popen(cmd, env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step_00000004").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert max(_losses(out)) < total, "killed mid-run"
    _run(home, out, *overrides, "--resume", "auto", recipe=recipe)
    return _losses(out)


def _assert_same_curve(got, ref, total):
    assert sorted(got) == list(range(1, total + 1))
    for step, values in got.items():
        assert len(values) == 1, f"step {step} logged {len(values)} times"  # redone steps replace their rows
        assert values[0] == pytest.approx(ref[step][0], rel=1e-6, abs=1e-7), (step, values, ref[step])


def test_killed_run_resumes_to_the_same_loss_sequence(home, reference_run, tmp_path):
    got = _kill_and_resume(home, tmp_path / "run", RECIPE, "checkpoint.every=2", total=12)
    _assert_same_curve(got, _losses(reference_run), 12)


def test_steps_redone_after_a_resume_are_logged_once(home, tmp_path):
    out = tmp_path / "run"
    _run(home, out, "train.steps=4", "checkpoint.every=2")
    shutil.rmtree(out / "checkpoints" / "step_00000004")  # as if killed after logging step 4, before saving it
    assert sorted(_losses(out)) == [1, 2, 3, 4]
    _run(home, out, "train.steps=4", "checkpoint.every=2", "--resume", "auto")
    got = _losses(out)
    assert {s: len(v) for s, v in got.items()} == {1: 1, 2: 1, 3: 1, 4: 1}


@pytest.fixture(scope="module")
def stage2_run(home, reference_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("s2") / "run"
    _run(home, out, f"model.init_from={reference_run}", recipe=RECIPE2)
    return out


def test_stage1_to_stage2_chain_runs_from_the_cli(stage2_run, reference_run):
    rows = [json.loads(x) for x in (stage2_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert all(0.5 < r["fill"] <= 1.0 for r in rows), "rows are packed"
    assert rows[0]["lr"] < 1e-3, "a fresh warmup, not the stage-1 schedule"
    s1 = _losses(reference_run)[12][0]
    assert rows[0]["loss"] < s1 + 1.5, "stage 2 starts from the stage-1 weights, not from scratch (~6.0)"
    from transformers import AutoModelForImageTextToText

    import genlip  # noqa: F401

    model = AutoModelForImageTextToText.from_pretrained(stage2_run / "checkpoints" / "step_00000010")
    assert model.config.hidden_size == 64


def test_stage2_resume_reproduces_the_uninterrupted_run(home, stage2_run, reference_run, tmp_path):
    got = _kill_and_resume(home, tmp_path / "run", RECIPE2, f"model.init_from={reference_run}", total=10)
    _assert_same_curve(got, _losses(stage2_run), 10)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one_process_with_the_same_global_batch(home, reference_run, tmp_path, parallel):
    """1 process x 2 workers x accum 2  ==  2 processes (gloo) x 1 worker x accum 1."""
    one = tmp_path / "one"
    _run(home, one, "train.steps=6", "data.num_workers=2")
    two = tmp_path / "two"
    p = _run(home, two, "train.steps=6", "data.num_workers=1", f"train.parallel={parallel}", torchrun=2)
    done = [x for x in p.stdout.splitlines() if x.startswith("done:")]
    assert len(done) == 1 and "'caption:txt': 48" in done[0], done  # both ranks' records: 6 steps x 8
    a, b = _losses(one), _losses(two)
    assert sorted(b) == list(range(1, 7))
    for s in range(1, 7):
        assert b[s][0] == pytest.approx(a[s][0], rel=1e-5), (s, a[s], b[s])
    w1 = _weights(one / "checkpoints" / "step_00000006")
    w2 = _weights(two / "checkpoints" / "step_00000006")
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-4)


def _weights(d):
    from safetensors.torch import load_file

    return load_file(str(d / "model.safetensors"))


def test_nan_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(home, tmp_path):
    out = tmp_path / "run"
    p = _run(home, out, "checkpoint.every=2", "debug.nan_steps=[6]", check=False)
    assert p.returncode == 1
    assert "non-finite loss" in p.stderr and "at step 6;" in p.stderr and "step_00000004" in p.stderr
    assert "set train.skip_nonfinite=true" in p.stderr
    last = out / "checkpoints" / "step_00000004"
    assert json.loads((last / "trainer_state.json").read_text())["step"] == 4
    assert not list((out / "checkpoints").glob(".tmp*"))


def test_nan_step_is_skipped_and_counted_when_asked(home, tmp_path):
    out = tmp_path / "run"
    _run(home, out, "train.steps=8", "train.skip_nonfinite=true", "debug.nan_steps=[4]")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["nonfinite_skips"] == 1 and rows[-1]["step"] == 8
    import math

    assert math.isnan(rows[3]["loss"]) and all(math.isfinite(r["loss"]) for r in rows[4:])


def test_a_changed_recipe_on_resume_is_said_once(home, tmp_path):
    _run(home, tmp_path / "r", "train.steps=2", "checkpoint.every=1")
    p = _run(home, tmp_path / "r", "train.steps=3", "checkpoint.every=1")
    out = p.stdout + p.stderr
    assert out.count("differs from the checkpoint's") == 1 and "train.steps: 2 -> 3" in out, out[-2000:]


def test_bad_recipe_key_is_reported(home, tmp_path):
    code, err = _refused(home, tmp_path / "x", "optim.learning_rate=1")
    assert code == 2 and "unknown key 'optim.learning_rate'" in err


def test_missing_data_and_tokenizer_are_recipe_mistakes_in_one_line(home, tmp_path):
    """What a paper recipe leaves to fill in (``/path/to/...``), or any path that does not exist: exit code 2 and one
    line naming the key, before anything is built or logged."""
    code, err = _refused(home, tmp_path / "x", "data.tokenizer=/path/to/qwen3-tokenizer")
    assert code == 2 and err.strip() == (
        "genlip-pretrain: bad recipe: data.tokenizer: directory '/path/to/qwen3-tokenizer' does not exist (the "
        "recipe's placeholder: set it to your own)")
    code, err = _refused(home, tmp_path / "x", f"data.sources=[{{path: {tmp_path / 'none.tar'}, type: wds}}]")
    assert code == 2 and err.strip() == (
        f"genlip-pretrain: bad recipe: data.sources.0.path: no file matches '{tmp_path / 'none.tar'}' (from "
        f"'{tmp_path / 'none.tar'}')")
    assert not (tmp_path / "x").exists()
    code, _ = _refused(home, tmp_path / "x", f"data.synth={{dir: {tmp_path / 'corpus'}}}", "data.tokenizer=/nope")
    assert code == 2 and not (tmp_path / "corpus").exists()  # refused before a corpus is generated
    # parquet columns are known when the file opens: a misnamed image or caption column is a recipe mistake, not
    # a run that stops later on "too many skips" (found by a user)
    from tests.datagen import write_parquet

    (tmp_path / "pq0").mkdir()
    write_parquet(tmp_path / "pq0" / "a.parquet", range(3))
    for field, want in (("image_field: jpg", "image_field: 'jpg' is not a column of"),
                        ("caption_fields: [txt, json.caption]",
                         "caption_fields: none of ['txt', 'json.caption'] is a column of")):
        code, err = _refused(home, tmp_path / "x", f"data.sources=[{{type: parquet, path: '{tmp_path}/pq0/*.parquet', "
                             f"{field}}}]")
        assert code == 2 and err.strip() == (f"genlip-pretrain: bad recipe: data.sources.0.{want} "
                                             f"{tmp_path / 'pq0' / 'a.parquet'} (columns: key, image, caption)"), err
    # a directory that holds no tokenizer (found by a user: a 34-line traceback, exit 1), or a broken one
    (tmp_path / "pq").mkdir()
    (tmp_path / "pq" / "a.parquet").write_bytes(b"PAR1")
    code, err = _refused(home, tmp_path / "x", f"data.tokenizer={tmp_path / 'pq'}")
    assert code == 2 and err.strip() == (
        f"genlip-pretrain: bad recipe: data.tokenizer: {tmp_path / 'pq'} is not a tokenizer directory (none of "
        "tokenizer.json, tokenizer_config.json, tokenizer.model, vocab.json)")
    (tmp_path / "pq" / "tokenizer.json").write_text("{}")
    code, err = _refused(home, tmp_path / "x", f"data.tokenizer={tmp_path / 'pq'}")
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith(
        f"genlip-pretrain: bad recipe: data.tokenizer: {tmp_path / 'pq'}: cannot be loaded ("), err
    assert not (tmp_path / "x").exists()


def test_checkpoints_and_exports_carry_the_training_preprocessing(reference_run, tmp_path):
    """The tiny recipe trains at 32 px with bilinear resizing: a checkpoint's AutoImageProcessor, the HF export and the
    timm export (through timm's own data config and transforms) all reproduce that input, so features match."""
    timm = pytest.importorskip("timm")
    from PIL import Image
    from transformers import AutoImageProcessor

    from genlip.data.transforms import fixed_resize
    from genlip.export_hf import export_hf
    from genlip.export_timm import export_timm
    from genlip.modeling import GenLIPVisionModel

    ckpt = sorted((reference_run / "checkpoints").glob("step_*"))[-1]
    img = Image.new("RGB", (48, 48))
    img.putdata([((7 * i) % 256, (13 * i) % 256, (29 * i) % 256) for i in range(48 * 48)])
    ours = fixed_resize(img, 32, [0.5] * 3, [0.5] * 3)[None]
    assert torch.allclose(AutoImageProcessor.from_pretrained(ckpt)(img, return_tensors="pt")["pixel_values"], ours,
                          atol=1e-6)
    enc = GenLIPVisionModel.from_pretrained(ckpt).eval()
    with torch.no_grad():
        want = enc(pixel_values=ours).last_hidden_state
    hf = export_hf(reference_run, tmp_path / "hf")  # a run directory, as the --help example gives it
    assert torch.allclose(AutoImageProcessor.from_pretrained(hf)(img, return_tensors="pt")["pixel_values"], ours,
                          atol=1e-6)
    out = export_timm(reference_run, tmp_path / "timm")
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    assert (cfg["input_size"], cfg["interpolation"]) == ((3, 32, 32), "bilinear")
    x = timm.data.create_transform(**cfg)(img)[None]
    assert torch.allclose(x, ours, atol=1e-6)
    with torch.no_grad():
        got = model.forward_features(x)
    torch.testing.assert_close(got, want, atol=3e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def two_worker_run(home, tmp_path_factory):
    """The pre-emption tests' run, uninterrupted (two loader workers): the curve a resumed run must end on."""
    out = tmp_path_factory.mktemp("two_workers") / "run"
    _run(home, out, "data.num_workers=2", "checkpoint.every=100")
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_preemption_signal_to_the_whole_process_group_saves_and_resumes_exactly(home, two_worker_run, tmp_path, sig):
    """What scancel and SLURM pre-emption do: the signal reaches every process of the job, the loader workers too.
    The workers ignore it, the trainer finishes its step, saves and exits 0; the resumed run ends where an
    uninterrupted one does. Ctrl-C in a terminal (SIGINT to the foreground process group) does the same and exits
    130, without a traceback."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "genlip.train.cli", "--recipe", RECIPE, f"train.output_dir={out}",
           "data.num_workers=2", "checkpoint.every=100"]
    proc = subprocess.Popen(cmd, env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a job step has
    deadline = time.time() + 300
    while not ((out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be signalled"
        time.sleep(0.02)
    os.killpg(proc.pid, sig)
    stdout, stderr = proc.communicate(timeout=300)
    ctrl_c = sig == signal.SIGINT
    assert proc.returncode == (130 if ctrl_c else 0) and "Traceback" not in stderr, stderr[-3000:]
    saved = sorted((out / "checkpoints").glob("step_*"))
    said = "interrupted: saved step" if ctrl_c else "pre-empted: saved step"
    assert saved and said in stdout and int(saved[-1].name[5:]) < 12, stdout[-2000:]
    _run(home, out, "data.num_workers=2", "checkpoint.every=100", "--resume", "auto")
    _assert_same_curve(_losses(out), _losses(two_worker_run), 12)


def _assert_bf16_run_follows(ref, bf) -> dict:
    """A 4-step bf16-parameter run against its fp32 twin: really computed in bf16 (the first loss differs), within
    bf16's precision of the fp32 curve, and its checkpoint holds fp32 master weights off the bf16 grid. Returns its
    losses."""
    a, b = _losses(ref), _losses(bf)
    assert a[1][0] != b[1][0]
    for s in range(1, 5):
        assert b[s][0] == pytest.approx(a[s][0], rel=2e-2), (s, a[s], b[s])
    t = _weights(bf / "checkpoints" / "step_00000004")["vit.blocks.0.mlp.up_proj.weight"]
    assert t.dtype == torch.float32 and not torch.equal(t, t.bfloat16().float())  # master weights, not bf16 copies
    return b


def test_bf16_parameters_under_fsdp_keep_fp32_master_weights(home, tmp_path):
    """train.param_dtype=bf16: computation with bf16 weights, the fp32 shards updated by the optimizer; the losses
    follow the fp32 run within bf16's precision and the checkpoint holds fp32 weights that moved off the bf16 grid."""
    ref, bf = tmp_path / "fp32", tmp_path / "bf16"
    _run(home, ref, "train.steps=4", "train.parallel=fsdp", torchrun=2)
    _run(home, bf, "train.steps=4", "train.parallel=fsdp", "train.param_dtype=bf16", torchrun=2)
    _assert_bf16_run_follows(ref, bf)
    p = _run(home, tmp_path / "x", "train.steps=2", "train.param_dtype=bf16", "train.parallel=ddp", torchrun=2,
             check=False)
    assert p.returncode != 0 and "with several processes it needs train.parallel=fsdp" in p.stderr  # torchrun: 1


def test_bf16_parameters_in_one_process_shard_over_a_group_of_one(home, tmp_path):
    """Without torchrun, train.param_dtype=bf16 runs FSDP2 over a process group of one (no port): bf16 compute,
    fp32 master weights in the checkpoint, and a resume from that checkpoint continues the same curve."""
    ref, bf, cut = tmp_path / "fp32", tmp_path / "bf16", tmp_path / "cut"
    _run(home, ref, "train.steps=4", "checkpoint.every=2")
    _run(home, bf, "train.steps=4", "train.param_dtype=bf16", "checkpoint.every=2")
    b = _assert_bf16_run_follows(ref, bf)
    _run(home, cut, "train.steps=4", "train.param_dtype=bf16", "checkpoint.every=2",
         f"checkpoint.resume={bf / 'checkpoints' / 'step_00000002'}")
    got = _losses(cut)
    assert sorted(got) == [3, 4]
    for s in (3, 4):
        assert got[s][0] == pytest.approx(b[s][0], rel=1e-6), (s, got[s], b[s])


def test_a_finished_run_given_another_recipe_is_refused_naming_the_keys(home, reference_run):
    """Given again, a finished run says so (also with other values of keys that only change how it runs); given a
    recipe that trains something else, it would pass the old weights off as the new ones: one line, exit 2."""
    before = sorted(str(p.relative_to(reference_run)) for p in reference_run.rglob("*"))
    same = _run(home, reference_run, "log.every=5", "data.num_workers=0", "checkpoint.keep=5")
    assert "already finished" in same.stdout, same.stdout[-2000:] + same.stderr[-2000:]
    code, err = _refused(home, reference_run, "optim.lr=0.00123", "optim.clip_grad=0.5")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0].startswith(f"genlip-pretrain: bad recipe: {reference_run}/checkpoints/step_")
    assert "is a finished run of another recipe (optim.clip_grad: 1.0 -> 0.5; optim.lr: " in lines[0]
    assert " -> 0.00123)" in lines[0] and "--resume none" in lines[0]
    assert sorted(str(p.relative_to(reference_run)) for p in reference_run.rglob("*")) == before


def test_starting_over_sets_the_earlier_run_aside(home, reference_run, tmp_path):
    """``--resume none`` in a directory that holds a finished 12-step run: the earlier files move to replaced-*/,
    so the new 3-step run's checkpoints are the only ones a resume, a rerun or a newest-checkpoint lookup sees."""
    run_dir = tmp_path / "r"
    shutil.copytree(reference_run, run_dir)
    old = sorted(p.name for p in run_dir.iterdir())
    (run_dir / "notes.txt").write_text("the user's own file: not the run's, left where it is")
    code, _ = _refused(home, run_dir, "checkpoint.resume=none", "data.tokenizer=/no/such/tokenizer")
    assert code == 2 and not list(run_dir.glob("replaced-*")), "a refused recipe moves nothing"
    p = _run(home, run_dir, "train.steps=3", "checkpoint.every=1", "checkpoint.resume=none")
    assert (run_dir / "notes.txt").exists()
    assert "starting over (--resume none): the earlier run's files moved to " in p.stdout, p.stdout[-2000:]
    aside = [d for d in run_dir.iterdir() if d.name.startswith("replaced-")]
    assert len(aside) == 1 and sorted(q.name for q in aside[0].iterdir()) == old
    assert [c.name for c in C.list_checkpoints(run_dir)] == ["step_00000002", "step_00000003"]
    assert sorted(_losses(run_dir)) == [1, 2, 3]
    again = _run(home, run_dir, "train.steps=3", "checkpoint.every=1")
    assert f"reached step 3; final weights: {run_dir}/checkpoints/step_00000003" in again.stdout, again.stdout


def _rank_pid(launcher_pid: int, rank: int) -> int | None:
    """The pid of a torchrun child process with ``RANK=rank`` (Linux /proc)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher_pid and f"RANK={rank}".encode() in env:
            return int(d.name)
    return None


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(home, tmp_path):
    """SIGUSR1 to rank 1 only (a node's share of a pre-emption arriving first): rank 0 learns of it through the
    step's own all-reduce, and both save the same step together and exit 0. Without the agreement rank 1 would
    wait in the checkpoint's collective while rank 0 waits in the next step's. (That a pre-empted run resumes
    exactly is the single-process tests' part.)"""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           free_port(), "-m", "genlip.train.cli", "--recipe", RECIPE, f"train.output_dir={out}",
           "checkpoint.every=100", "train.steps=24"]
    proc = subprocess.Popen(cmd, env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 300
    while not ((out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be signalled"
        time.sleep(0.02)
    pid = _rank_pid(proc.pid, 1)
    assert pid is not None
    os.kill(pid, signal.SIGUSR1)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("the ranks did not stop together") from None
    assert proc.returncode == 0, stderr[-3000:]
    saved = C.list_checkpoints(out)
    assert len(saved) == 1 and "pre-empted: saved step" in stdout and int(saved[0].name[5:]) < 24, stdout[-2000:]


def test_own_sources_and_tokenizer_generate_no_corpus(tmp_path, monkeypatch):
    """The tiny recipes generate their corpus for its data and tokenizer; given both of one's own (genlip-data's
    help example), nothing would use it, so it is not generated (a user saw 2048 samples made for nothing)."""
    from genlip.data.tokenizer import train_tokenizer
    from genlip.train.data_setup import build_stream_parts
    from genlip.train.recipe import load_recipe
    from tests.datagen import write_wds

    monkeypatch.setenv("GENLIP_HOME", str(tmp_path / "home"))
    write_wds(tmp_path / "a.tar", range(4))
    train_tokenizer(["a red square", "the word apple"] * 20, tmp_path / "tok", vocab_size=300)
    own = [f"data.sources=[{{type: wds, path: '{tmp_path / 'a.tar'}'}}]", f"data.tokenizer={tmp_path / 'tok'}"]
    recipe = load_recipe(Path(__file__).parents[2] / "recipes" / "genlip" / "stage1_tiny_cpu.yaml", own)
    assert recipe.data.synth is not None  # the recipe's own corpus, which these settings leave unused
    sources, units, tok, _ = build_stream_parts(recipe)
    assert [s.path for s in sources] == [str(tmp_path / "a.tar")] and not (tmp_path / "home").exists()
