"""Evaluate one MLLM checkpoint on one suite through the real ``lmms-eval`` CLI, and read back its scores.

lmms-eval exits 0 even when a task fails, so success is decided here: every task of the suite must appear in its
results file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

from eval.local_tasks import read_manifest
from eval.suites import SUITES, averages
from eval.synth_bench import write_synth_benchmarks

PROGRESS_PREFIX = "[genlip-eval]"  # lines the lmms-eval model prints for the user (eval.lmms_model.Progress)

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class EvalError(RuntimeError):
    pass


def _run_streaming(args: list[str], env: dict, cwd: Path, log: Path, timeout: float | None) -> tuple[int, str]:
    """Run lmms-eval with all of its output into ``log`` and its progress lines (one per benchmark, from
    :class:`eval.lmms_model.Progress`) echoed as they come; returns the exit code and the last line it printed."""
    last = ""
    with open(log, "w") as fh, subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, text=True, errors="replace") as p:
        timer = threading.Timer(timeout, p.kill) if timeout else None
        if timer:
            timer.start()
        try:
            for line in p.stdout:
                fh.write(line)
                if line.strip():
                    last = ANSI.sub("", line.strip().split("\r")[-1])  # lmms-eval colours its log lines
                if line.startswith(PROGRESS_PREFIX):
                    print(line.rstrip(), file=sys.stderr, flush=True)
        finally:
            if timer:
                timer.cancel()
        returncode = p.wait()
    return returncode, last


class OtherResults(EvalError):
    """The output directory holds another model's scores: writing there would mix two models' results."""


def model_id(model_dir: str | Path) -> str:
    """What identifies a saved model's weights without reading them: the names, sizes and modification times of its
    weight and config files. A model trained again in the same directory gets another id, so its old scores are not
    taken for its new ones."""
    d = Path(model_dir)
    files = sorted(f for f in d.iterdir() if f.is_file() and (f.suffix == ".safetensors" or f.name in (
        "config.json", "genlip_mllm_image.json", "model.safetensors.index.json")))
    stamp = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]


def _texts(resp) -> list[str]:
    if isinstance(resp, str):
        return [resp]
    return [t for r in resp for t in _texts(r)] if isinstance(resp, list) else []


def empty_answers(samples_dir: str | Path, task: str) -> list[int]:
    """``[empty, all]``: how many of the answers lmms-eval logged for ``task`` are empty or blank (a model that ends
    at once, as a barely trained one does, scores 0 without a word otherwise)."""
    files = sorted(Path(samples_dir).glob(f"*samples_{task}.jsonl"))
    answers = [_texts(json.loads(line).get("filtered_resps")) for line in
               (files[-1].read_text().splitlines() if files else []) if line.strip()]
    return [sum(not any(t.strip() for t in a) for a in answers), len(answers)]


def run_suite(model_dir: str | Path, suite: str, out_dir: str | Path, limit: int | None = None,
              max_new_tokens: int | None = None, timeout: float | None = None,
              tasks_dir: str | Path | None = None, reuse: bool = True, batch_size: int = 1) -> dict:
    """Run ``suite`` on ``model_dir``; writes ``out_dir/raw`` (lmms-eval output) and ``out_dir/scores.json``.
    Returns ``{"benchmarks": {name: paper-scale value}, "averages": {...}, "raw": {task: {metric: value}}}``.

    ``tasks_dir``: task files written by ``genlip-eval local-tasks`` (local exports of the benchmark datasets); every
    task of the suite must be there, and runs under its local name.

    ``batch_size``: questions answered together (left-padded; greedy answers equal batch size 1's).

    ``reuse``: when ``out_dir/scores.json`` already holds this model's scores on this suite with the same limit and
    generation length, and the model was not saved again since (:func:`model_id`), return them (``"reused": True``)
    instead of running lmms-eval again. An ``out_dir`` holding another model's scores is an :class:`OtherResults`."""
    if suite not in SUITES:
        raise KeyError(f"unknown suite {suite!r}; choose one of {sorted(SUITES)}")
    benches = SUITES[suite]
    out = Path(out_dir)
    settings = {"model_path": str(Path(model_dir).resolve()), "model_id": model_id(model_dir), "suite": suite,
                "limit": limit, "max_new_tokens": max_new_tokens,
                "tasks_dir": str(Path(tasks_dir).resolve()) if tasks_dir is not None else None}
    if (out / "scores.json").exists():
        prev = json.loads((out / "scores.json").read_text())
        if prev.get("model_path") not in (None, settings["model_path"]):
            raise OtherResults(f"{out} holds the scores of another model ({prev['model_path']}); give another --out")
        if reuse and all(prev.get(k) == v for k, v in settings.items()):
            return {**prev, "reused": True}
    out.mkdir(parents=True, exist_ok=True)
    tasks = sorted({b.task for b in benches})
    run_as = {t: t for t in tasks}  # suite task -> the task lmms-eval runs
    include = []
    if tasks_dir is not None:
        manifest = read_manifest(tasks_dir)
        missing = [t for t in tasks if t not in manifest["tasks"]]
        if missing:
            why = "".join(f"\n  {t}: {manifest['missing'][t]}" for t in missing if t in manifest["missing"])
            raise EvalError(f"{tasks_dir} has no local task for {missing}{why}")
        run_as = {t: manifest["tasks"][t] for t in tasks}
        include.append(str(Path(tasks_dir).resolve()))
    args = [sys.executable, "-m", "lmms_eval", "--model", "genlip_mllm", "--model_args",
            f"pretrained={Path(model_dir).resolve()}" + (f",max_new_tokens={max_new_tokens}" if max_new_tokens
                                                         else ""),
            "--tasks", ",".join(run_as[t] for t in tasks), "--batch_size", str(batch_size),
            "--output_path", str((out / "raw").resolve()), "--log_samples"]
    if suite == "synth":
        bench = out / "synth_bench"
        if not (bench / "synth_bench.json").exists():
            write_synth_benchmarks(bench)
        include.append(str((bench / "tasks").resolve()))
    if include:
        args += ["--include_path", include[0]]  # lmms-eval takes one include path
    if limit:
        args += ["--limit", str(limit)]
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "HF_DATASETS_OFFLINE": os.environ.get("HF_DATASETS_OFFLINE", "1")}
    work = out / "cwd"  # lmms-eval writes some files into its working directory
    work.mkdir(exist_ok=True)
    started = {p.name for p in (out / "raw").rglob("*_results.json")} if (out / "raw").exists() else set()
    returncode, last_line = _run_streaming(args, env, work, out / "lmms_eval.log", timeout)
    with contextlib.suppress(OSError):  # kept only when lmms-eval left something there
        work.rmdir()
    new = sorted(f for f in (out / "raw").rglob("*_results.json") if f.name[0].isdigit() and f.name not in started) \
        if (out / "raw").exists() else []
    if returncode != 0 or not new:
        raise EvalError(f"lmms-eval failed for {model_dir} on {suite} (exit {returncode}); see "
                        f"{out / 'lmms_eval.log'}: {last_line}")
    got = json.loads(new[-1].read_text())["results"]
    raw = {t: got[run_as[t]] for t in tasks if run_as[t] in got}
    missing = [run_as[t] for t in tasks if t not in raw]
    if missing:
        raise EvalError(f"lmms-eval produced no result for {missing}; see {out / 'lmms_eval.log'}")
    scores = {}
    for b in benches:
        value = raw[b.task].get(b.metric)
        if not isinstance(value, (int, float)):
            raise EvalError(f"{b.task} has no numeric {b.metric!r} (got {value!r}); see {out / 'lmms_eval.log'}")
        scores[b.name] = b.paper_value(float(value))
    result = {"model": str(model_dir), **settings, "benchmarks": scores, "averages": averages(benches, scores),
              "raw": {t: {k: v for k, v in raw[t].items() if isinstance(v, (int, float))} for t in tasks},
              "samples_dir": str(new[-1].parent), "tasks": run_as,
              "empty_answers": {t: empty_answers(new[-1].parent, run_as[t]) for t in tasks}}
    (out / "scores.json").write_text(json.dumps(result, indent=1))
    return result
