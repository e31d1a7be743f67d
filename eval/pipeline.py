"""The whole chain on one machine, and whether GenLIP's claim holds at small scale: the orchestration.

corpus -> GenLIP stage 1 -> stage 2 -> (same data, same number of image-text samples) a SigLIP-style sigmoid
contrastive encoder of the same size -> a randomly initialised encoder of the same size -> for each encoder: MLLM
alignment, instruction tuning with the encoder frozen, evaluation on the generated benchmarks -> probes -> one report
with confidence intervals and a verdict on the paper's ordering (generative > contrastive, largest gap on reading).

Every step is skipped when its output exists, so an interrupted pipeline continues where it stopped. Steps run as
subprocesses through the project's own CLIs (``genlip-pretrain``, ``genlip-mllm``, lmms-eval). What is compared is
:mod:`eval.pipeline_config`; the probes are :mod:`eval.pipeline_probes`; the report is :mod:`eval.pipeline_report`.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import yaml

from eval.pipeline_config import load_config
from eval.pipeline_probes import run_probe_suite
from eval.pipeline_report import write_pipeline_report
from eval.report import load_cells
from eval.sweep import sweep
from genlip.export_hf import export_random
from genlip.run.checkpoint import run_info


def _run(cmd: list[str], log: Path, what: str) -> float:
    """Run a step, its output into ``log``; returns seconds. A failure names the log and its last line."""
    t0 = time.time()
    with open(log, "w") as fh:
        p = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        tail = (log.read_text().strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{what} failed (exit {p.returncode}); see {log}: {tail}")
    return time.time() - t0


def _samples_seen(run: Path) -> int:
    return run_info(run).samples


def _done(run: Path) -> bool:
    """A training run that reached its recipe's last step (an interrupted one resumes when run again)."""
    info = run_info(run)
    return info is not None and info.finished


def pretrain_encoders(cfg: dict, root: Path, timings: dict) -> dict[str, Path]:
    """GenLIP (stage 1 + 2), the sigmoid baseline at the same number of samples, and a random encoder."""
    enc = root / "encoders"
    logs = root / "logs"
    enc.mkdir(parents=True, exist_ok=True)
    logs.mkdir(exist_ok=True)
    py = sys.executable
    s1, s2, g = enc / "genlip_stage1", enc / "genlip", enc / "contrastive"
    if not _done(s1):
        print("[pipeline] GenLIP stage 1 ...", flush=True)
        timings["genlip stage 1"] = _run([py, "-m", "genlip.train.cli", "--recipe", cfg["stage1"]["recipe"],
                                          *cfg["stage1"].get("overrides", []), f"train.output_dir={s1}",
                                          f"train.seed={cfg['seed']}"], logs / "genlip_stage1.log", "GenLIP stage 1")
    if not _done(s2):
        print("[pipeline] GenLIP stage 2 ...", flush=True)
        timings["genlip stage 2"] = _run([py, "-m", "genlip.train.cli", "--recipe", cfg["stage2"]["recipe"],
                                          *cfg["stage2"].get("overrides", []), f"model.init_from={s1}",
                                          f"train.output_dir={s2}", f"train.seed={cfg['seed']}"],
                                         logs / "genlip_stage2.log", "GenLIP stage 2")
    budget = _samples_seen(s1) + _samples_seen(s2)
    # at stage 1's batch (as its run resolved it), so the baseline sees as many image-text samples as GenLIP did
    steps = math.ceil(budget / int(run_info(s1).recipe["train"]["global_batch"]))
    if not _done(g):
        print(f"[pipeline] sigmoid contrastive baseline: {steps} steps = {budget} samples, as GenLIP saw ...",
              flush=True)
        # the budget comes last so that stage 1's own overrides (e.g. train.steps) cannot change it
        timings["contrastive"] = _run([py, "-m", "genlip.train.cli", "--recipe", cfg["stage1"]["recipe"],
                                       *cfg["stage1"].get("overrides", []), *cfg["contrastive"].get("overrides", []),
                                       "model.objective=sigmoid", f"train.steps={steps}", f"train.output_dir={g}",
                                       f"train.seed={cfg['seed']}", f"checkpoint.every={steps}"],
                                      logs / "contrastive.log", "contrastive baseline")
    rnd = enc / "random"
    if not (rnd / "model.safetensors").exists():
        export_random(s1, rnd, cfg["seed"])
    (root / "budget.json").write_text(json.dumps({"genlip_samples": budget, "contrastive_steps": steps,
                                                  "contrastive_samples": _samples_seen(g)}, indent=1))
    return {"genlip": s2, "contrastive": g, "random": rnd}


def run_pipeline(config: str | Path | None = None, out: str | None = None) -> Path:
    cfg = load_config(config)
    root = Path(out or cfg["out"])
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.resolved.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.time()
    timings: dict[str, float] = {}
    encoders = pretrain_encoders(cfg, root, timings)
    m, e = cfg["mllm"], cfg["eval"]
    grid = {"out": str(root / "sweep"),
            "encoders": {k: {"path": str(v), "image_size": m["image_size"]} for k, v in encoders.items()},
            "llms": {m["llm"]: m["llm"]}, "protocols": {"frozen": {"mode": "resize", "lr_vision": 0.0}},
            "suites": [e["suite"]], "pretrain_recipe": m["pretrain_recipe"], "finetune_recipe": m["finetune_recipe"],
            "overrides": m["overrides"], "eval": {k: e[k] for k in ("limit", "max_new_tokens") if e.get(k)}}
    (root / "grid.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    ts = time.time()
    status = sweep(root / "grid.yaml")
    if any(v.get("ran") for v in status.values()):
        timings["MLLMs + evaluation"] = time.time() - ts
    failed = {k: v["error"] for k, v in status.items() if v["status"] != "done"}
    if failed:
        raise RuntimeError(f"sweep cells failed: {failed}")
    cells = load_cells([Path(p) for s in status.values() for p in s["scores"].values()])
    names = {c["name"]: c["name"].split("__")[0] for c in cells}
    for c in cells:
        c["name"] = names[c["name"]]
    tp = time.time()
    probes = (run_probe_suite(encoders, root, int(m["image_size"]), e["resamples"], e.get("probe_per_class", (40, 20)))
              if e.get("probes", True) else None)
    timings["probes"] = time.time() - tp
    timings["this invocation"] = time.time() - t0
    tf = root / "timings.json"  # steps skipped on a re-run keep the time they took when they ran
    timings = {**(json.loads(tf.read_text()) if tf.exists() else {}), **timings}
    tf.write_text(json.dumps(timings, indent=1))
    write_pipeline_report(cells, root / "report", json.loads((root / "budget.json").read_text()), timings,
                          e["resamples"], probes)
    return root / "report"
