"""The whole chain on one machine, and whether GenLIP's claim holds at small scale.

corpus -> GenLIP stage 1 -> stage 2 -> (same data, same number of image-text samples) a SigLIP-style sigmoid
contrastive encoder of the same size -> a randomly initialised encoder of the same size -> for each encoder: MLLM
alignment, instruction tuning with the encoder frozen, evaluation on the generated benchmarks -> one report with
confidence intervals and a verdict on the paper's ordering (generative > contrastive, largest gap on reading tasks).

Every step is skipped when its output exists, so an interrupted pipeline continues where it stopped. Steps run as
subprocesses through the project's own CLIs (``genlip-pretrain``, ``genlip-mllm``, lmms-eval).

Config (YAML, every key optional; ``recipes/pipeline/cpu_compare.yaml`` is the default)::

    out: runs/pipeline
    stage1: {recipe: stage1_tiny_cpu, overrides: []}
    stage2: {recipe: stage2_tiny_cpu, overrides: []}
    contrastive: {overrides: ["model.overrides.text_tower={layers: 2}"]}
    mllm: {llm: tiny, image_size: 64, pretrain_recipe: pretrain_tiny_cpu, finetune_recipe: finetune_tiny_cpu,
           overrides: {pretrain: [], finetune: []}}
    eval: {suite: synth, limit: null, max_new_tokens: 16, resamples: 2000, probes: true, probe_per_class: [40, 20]}
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from eval.suites import SUITES
from eval.sweep import StageOverrides
from genlip.train.checkpoint import list_checkpoints, resolve_weights_dir
from genlip.train.recipe import build, to_dict
from genlip.train.recipe import load_config as load_strict

READING_GROUP = "Doc&OCR"


@dataclass
class Stage1Entry:
    recipe: str = "stage1_tiny_cpu"
    overrides: list[str] = field(default_factory=list)


@dataclass
class Stage2Entry:
    recipe: str = "stage2_tiny_cpu"
    overrides: list[str] = field(default_factory=list)


@dataclass
class ContrastiveEntry:
    overrides: list[str] = field(default_factory=list)


@dataclass
class MllmEntry:
    llm: str = "tiny"  # a local LLM directory, or the generated tiny Qwen2
    image_size: int = 64
    pretrain_recipe: str = "pretrain_tiny_cpu"
    finetune_recipe: str = "finetune_tiny_cpu"
    overrides: StageOverrides = field(default_factory=StageOverrides)


@dataclass
class PipelineEval:
    suite: str = "synth"
    limit: int | None = None
    max_new_tokens: int = 16
    resamples: int = 2000  # bootstrap resamples for every interval
    probes: bool = True
    probe_per_class: list[int] = field(default_factory=lambda: [40, 20])  # train, val images per class

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise ValueError(f"eval.suite {self.suite!r} is not one of {sorted(SUITES)}")
        if len(self.probe_per_class) != 2 or min(self.probe_per_class) < 1:
            raise ValueError(f"eval.probe_per_class must be two positive counts, got {self.probe_per_class}")


@dataclass
class PipelineConfig:
    """The schema of a pipeline config: unknown keys and bad values are errors at load."""

    out: str = "runs/pipeline"
    seed: int = 0
    stage1: Stage1Entry = field(default_factory=Stage1Entry)
    stage2: Stage2Entry = field(default_factory=Stage2Entry)
    contrastive: ContrastiveEntry = field(default_factory=ContrastiveEntry)
    mllm: MllmEntry = field(default_factory=MllmEntry)
    eval: PipelineEval = field(default_factory=PipelineEval)


def load_config(path: str | Path | None) -> dict:
    """The config, validated (:class:`PipelineConfig`), as a plain dict with every default filled in."""
    return to_dict(load_strict(path, PipelineConfig) if path else build(PipelineConfig, {}))


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
    return int(json.loads((resolve_weights_dir(run) / "trainer_state.json").read_text())["samples"])


def _done(run: Path) -> bool:
    """A training run that reached its recipe's last step (an interrupted one resumes when run again)."""
    if not list_checkpoints(run):
        return False
    recipe = yaml.safe_load((resolve_weights_dir(run) / "recipe.yaml").read_text())
    state = json.loads((resolve_weights_dir(run) / "trainer_state.json").read_text())
    return state["step"] >= recipe["train"]["steps"]


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
    from genlip.resources import resolve_recipe
    from genlip.train.recipe import load_recipe

    r1 = load_recipe(resolve_recipe(cfg["stage1"]["recipe"], "genlip"), cfg["stage1"].get("overrides", []))
    steps = math.ceil(budget / r1.train.global_batch)
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
        import torch

        from genlip.config import GenLIPConfig
        from genlip.modeling import GenLIPVisionModel

        config = GenLIPConfig.from_pretrained(str(resolve_weights_dir(s1)))
        torch.manual_seed(cfg["seed"])
        GenLIPVisionModel(config).save_pretrained(str(rnd))
    (root / "budget.json").write_text(json.dumps({"genlip_samples": budget, "contrastive_steps": steps,
                                                  "contrastive_samples": _samples_seen(g)}, indent=1))
    return {"genlip": s2, "contrastive": g, "random": rnd}


# Probe tasks on generated images the encoders never saw (another seed): reading vs perception.
PROBE_WORDS = ("apple", "river", "candle", "garden", "rocket", "winter")
PROBE_CLASSES = {"Word": len(PROBE_WORDS), "Tallest bar": 5, "Letter colour": 7, "Shape": 3, "Count": 3}
PROBE_TASKS = {  # name -> (group, generator kind, class of a sample's metadata or None to skip the sample)
    "Word": ("reading", "word", lambda m: m["text"] if m["text"] in PROBE_WORDS else None),
    "Tallest bar": ("reading", "chart", lambda m: m["labels"][m["values"].index(max(m["values"]))]
                    if m["values"].count(max(m["values"])) == 1 else None),
    "Letter colour": ("perception", "word", lambda m: m["color"]),
    "Shape": ("perception", "shapes", lambda m: m["groups"][0][1] if len(m["groups"]) == 1 else None),
    "Count": ("perception", "shapes", lambda m: str(m["groups"][0][2]) if len(m["groups"]) == 1 else None),
}


def write_probe_tasks(out: Path, per_class: tuple[int, int] = (40, 20), seed: int = 4242) -> Path:
    """``out/<task>/{train,val}/<class>/*.png`` for every probe task (made once; a marker file says it is done)."""
    from genlip.data.synth import WORDS, synth_sample

    if (out / "done.json").exists():
        return out
    missing = [w for w in PROBE_WORDS if w not in WORDS]
    if missing:
        raise ValueError(f"probe words {missing} are not in the generator's vocabulary")
    import shutil

    need = sum(per_class)
    for name, (_, kind, label) in PROBE_TASKS.items():
        counts: dict[str, int] = {}
        for i in range(30_000):
            img, _, meta = synth_sample(i, seed, kinds=(kind,))
            c = label(meta)
            if c is None or counts.get(c, 0) >= need:
                continue
            split = "train" if counts.get(c, 0) < per_class[0] else "val"
            d = out / name.replace(" ", "_") / split / c
            d.mkdir(parents=True, exist_ok=True)
            img.save(d / f"{i:06d}.png")
            counts[c] = counts.get(c, 0) + 1
            if len(counts) >= PROBE_CLASSES[name] and all(v >= need for v in counts.values()):
                break
        for c, v in counts.items():  # rare classes that did not fill up are dropped, so every task is balanced
            if v < need:
                for split in ("train", "val"):
                    shutil.rmtree(out / name.replace(" ", "_") / split / c, ignore_errors=True)
    (out / "done.json").write_text(json.dumps({"seed": seed, "per_class": per_class}))
    return out


def run_probe_suite(encoders: dict[str, Path], root: Path, image_size: int, resamples: int,
                    per_class: tuple[int, int] = (40, 20)) -> dict:
    """Attentive and linear probes of every encoder on every probe task; top-1 with intervals."""
    from eval.stats import bootstrap_ci, paired_bootstrap
    from genlip.probe import run_probes

    data = write_probe_tasks(root / "probe_data", tuple(per_class))
    out_file = root / "probes.json"
    res = json.loads(out_file.read_text()) if out_file.exists() else {}
    for enc, path in encoders.items():
        for task in PROBE_TASKS:
            key = f"{enc}/{task}"
            if key in res:
                continue
            r = run_probes(str(path), data / task.replace(" ", "_"), ("attentive", "linear"), image_size=image_size,
                           seed=0)
            res[key] = {k: {"top1": v["top1"], "correct": v["val_correct"], "chance": v["chance_top1"],
                            "ci": [100 * x for x in bootstrap_ci(v["val_correct"], resamples)]}
                        for k, v in r.items()}
            out_file.write_text(json.dumps(res))
    cmp = {}
    for other in encoders:
        if other == "genlip":
            continue
        for task in PROBE_TASKS:
            for kind in ("attentive", "linear"):
                d = paired_bootstrap(res[f"genlip/{task}"][kind]["correct"], res[f"{other}/{task}"][kind]["correct"],
                                     resamples)
                cmp[f"{other}/{task}/{kind}"] = {"diff": 100 * d.diff, "low": 100 * d.low, "high": 100 * d.high,
                                                 "significant": d.significant}
    return {"results": res, "compare": cmp}


def run_pipeline(config: str | Path | None = None, out: str | None = None) -> Path:
    from eval.sweep import sweep

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
    from eval.report import load_cells

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


def cell_intervals(cell: dict, resamples: int) -> dict[str, tuple[float, float] | None]:
    """95% bootstrap interval of every benchmark's score (paper scale), resampling the evaluated samples."""
    from eval.report import per_sample_scores
    from eval.stats import bootstrap_ci
    from eval.suites import SUITES

    out = {}
    for b in SUITES[cell["suite"]]:
        try:
            scores = per_sample_scores(cell, b.task, b.metric)
        except (KeyError, FileNotFoundError):
            scores = None
        if scores is None:
            from eval.stats import cider_bootstrap_ci

            out[b.name] = cider_bootstrap_ci(cell, b, resamples)
        else:
            lo, hi = bootstrap_ci(list(scores.values()), resamples)
            out[b.name] = (lo * b.scale, hi * b.scale)
    return out


def distinct_answers(cell: dict, task: str) -> int:
    """How many different answers a cell gave on a task (from lmms-eval's logged samples)."""
    task = cell.get("tasks", {}).get(task, task)
    files = sorted(Path(cell["samples_dir"]).glob(f"*samples_{task}.jsonl"))
    if not files:
        return -1
    return len({json.dumps(json.loads(line).get("filtered_resps")) for line in files[-1].read_text().splitlines()})


def verdict(cells: dict[str, dict], cmp: dict[str, list[dict]]) -> list[str]:
    """Did the paper's ordering reproduce? Generative > contrastive (ALL AVG, per benchmark with its interval) and
    the largest GenLIP - contrastive gap on the reading (Doc&OCR) benchmarks."""
    from eval.suites import SUITES

    g, c = cells["genlip"], cells["contrastive"]
    suite = SUITES[g["suite"]]
    lines = []
    ga, ca, ra = g["averages"]["ALL AVG"], c["averages"]["ALL AVG"], cells["random"]["averages"]["ALL AVG"]
    lines.append(f"- ALL AVG: GenLIP {ga:.1f}, contrastive {ca:.1f}, random {ra:.1f}. "
                 f"Generative > contrastive: **{'yes' if ga > ca else 'no'}**; "
                 f"both above random: **{'yes' if min(ga, ca) > ra else 'no'}**.")
    const = {n: [b.name for b in suite if distinct_answers(x, b.task) == 1] for n, x in cells.items()}
    if any(const.values()):
        lines.append("- Answers that do not depend on the image (one and the same answer to every question of a "
                     "benchmark), so those scores say nothing about the encoder: " + "; ".join(
                         f"{n}: {', '.join(v)}" for n, v in const.items() if v) + ".")
    sig = [r for r in cmp["contrastive"] if r.get("significant")]
    lines.append(f"- Per benchmark (95% paired bootstrap), GenLIP - contrastive is significant on "
                 f"{len(sig)} of {len(cmp['contrastive'])}: " + (", ".join(
                     f"{r['benchmark']} {r['diff']:+.1f} [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}]" for r in sig)
                     or "none") + ".")
    gaps = {b.name: g["benchmarks"][b.name] - c["benchmarks"][b.name] for b in suite}
    reading = [b.name for b in suite if b.group == READING_GROUP]
    other = [b.name for b in suite if b.group != READING_GROUP]
    if reading and other:
        top = max(gaps, key=gaps.get)
        both_blind = set(const.get("genlip", [])) & set(const.get("contrastive", []))
        if gaps[top] <= 0:
            answer = "no** (GenLIP is ahead on no benchmark)"
        elif top in both_blind:
            answer = "not shown** (both encoders' MLLMs answer it without looking at the image)"
        else:
            answer = f"{'yes' if top in reading else 'no'}**"
        lines.append(f"- Largest GenLIP - contrastive gap: {top} ({gaps[top]:+.1f}); reading tasks "
                     f"({', '.join(reading)}) mean gap {sum(gaps[n] for n in reading) / len(reading):+.1f} vs "
                     f"{sum(gaps[n] for n in other) / len(other):+.1f} on the rest. Largest gap on a reading task: "
                     f"**{answer}.")
    return lines


def probe_lines(probes: dict) -> list[str]:
    """Markdown: per task and encoder, attentive / linear top-1 with intervals; GenLIP - other, paired."""
    res, cmp = probes["results"], probes["compare"]
    encs = list(dict.fromkeys(k.split("/")[0] for k in res))
    lines = ["| task | group | " + " | ".join(encs) + " |", "|---|---|" + "---|" * len(encs)]
    for task, (group, _, _) in PROBE_TASKS.items():
        row = []
        for enc in encs:
            a, li = res[f"{enc}/{task}"]["attentive"], res[f"{enc}/{task}"]["linear"]
            row.append(f"{a['top1']:.0f} [{a['ci'][0]:.0f}, {a['ci'][1]:.0f}] / {li['top1']:.0f}")
        lines.append(f"| {task} | {group} | " + " | ".join(row) + " |")
    lines += ["", "Attentive top-1 [95% interval] / linear top-1, in percent, on held-out generated images.", "",
              "| GenLIP - | task | attentive (95% paired) | linear (95% paired) |", "|---|---|---|---|"]
    for key in [k for k in cmp if k.endswith("/attentive")]:
        other, task, _ = key.split("/")
        a, li = cmp[key], cmp[f"{other}/{task}/linear"]
        lines.append(f"| {other} | {task} | {a['diff']:+.1f} [{a['low']:+.1f}, {a['high']:+.1f}] | "
                     f"{li['diff']:+.1f} [{li['low']:+.1f}, {li['high']:+.1f}] |")
    return lines


def probe_verdict(probes: dict) -> list[str]:
    res = probes["results"]
    out = []
    means = {}
    for enc in dict.fromkeys(k.split("/")[0] for k in res):
        for group in ("reading", "perception"):
            tasks = [t for t, (g, _, _) in PROBE_TASKS.items() if g == group]
            means[enc, group] = sum(res[f"{enc}/{t}"]["attentive"]["top1"] for t in tasks) / len(tasks)
    gr = means["genlip", "reading"] - means["contrastive", "reading"]
    gp = means["genlip", "perception"] - means["contrastive", "perception"]
    out.append(f"- Attentive probes, mean top-1 on reading tasks: GenLIP {means['genlip', 'reading']:.1f}, "
               f"contrastive {means['contrastive', 'reading']:.1f}, random {means['random', 'reading']:.1f}; on "
               f"perception tasks: {means['genlip', 'perception']:.1f}, {means['contrastive', 'perception']:.1f}, "
               f"{means['random', 'perception']:.1f}. Generative > contrastive on reading: "
               f"**{'yes' if gr > 0 else 'no'}**; gap larger on reading than on perception: "
               f"**{'yes' if gr > gp else 'no'}** ({gr:+.1f} vs {gp:+.1f}).")
    return out


def write_pipeline_report(cells: list[dict], out: Path, budget: dict, timings: dict, resamples: int = 2000,
                          probes: dict | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eval.report import compare, write_report
    from eval.suites import SUITES

    out.mkdir(parents=True, exist_ok=True)
    write_report(cells, out / "table")
    by = {c["name"]: c for c in cells}
    suite = SUITES[cells[0]["suite"]]
    cis = {n: cell_intervals(c, resamples) for n, c in by.items()}
    cmp = {other: compare(by["genlip"], by[other], resamples) for other in ("contrastive", "random")}
    from eval.stats import cider_paired_bootstrap

    for other, rows in cmp.items():  # corpus-level CIDEr: paired bootstrap over images, recomputing CIDEr
        for i, r in enumerate(rows):
            bench = next(b for b in suite if b.name == r["benchmark"])
            if "ci_low" not in r and bench.metric.endswith("CIDEr,none"):
                d = cider_paired_bootstrap(by["genlip"], by[other], bench, min(resamples, 1000))
                rows[i] = {**r, "diff": d.diff, "ci_low": d.low, "ci_high": d.high, "p": d.p_two_sided, "n": d.n,
                           "significant": d.significant, "note": "CIDEr recomputed per resample"}
    md = ["# GenLIP vs a sigmoid contrastive encoder vs a random encoder (CPU, generated data)", "",
          f"Same corpus; the contrastive encoder saw {budget['contrastive_samples']} image-text samples, GenLIP "
          f"{budget['genlip_samples']} (stage 1 + stage 2). Same architecture and size; MLLM: 2-layer MLP projector "
          f"into the same tiny LLM, alignment then instruction tuning with the encoder frozen.", "",
          "## Verdict", "", *verdict(by, cmp), *(probe_verdict(probes) if probes else []), "",
          "## MLLM scores (95% bootstrap interval over the evaluated samples)", "",
          "| encoder | " + " | ".join(b.name for b in suite) + " | ALL AVG |",
          "|---|" + "---|" * (len(suite) + 1)]
    for n, c in by.items():
        cells_txt = []
        for b in suite:
            ci = cis[n][b.name]
            v = c["benchmarks"][b.name]
            cells_txt.append(f"{v:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else f"{v:.1f}")
        md.append(f"| {n} | " + " | ".join(cells_txt) + f" | {c['averages']['ALL AVG']:.1f} |")
    for other, rows in cmp.items():
        md += ["", f"## GenLIP - {other} (95% paired bootstrap)", "", "| benchmark | diff | interval | p | n |",
               "|---|---|---|---|---|"]
        for r in rows:
            if "ci_low" in r:
                md.append(f"| {r['benchmark']} | {r['diff']:+.2f} | [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] | "
                          f"{r['p']:.3f} | {r['n']} |")
            else:
                md.append(f"| {r['benchmark']} | {r['diff']:+.2f} | {r.get('note', '')} | | |")
    if probes:
        md += ["", "## Probes on frozen features", "", *probe_lines(probes)]
    md += ["", "## Time", "", *[f"- {k}: {v / 60:.1f} min" for k, v in timings.items()], "",
           "Charts: `scores.png` (bars with intervals); the plain table and per-suite chart are in `table/`."]
    (out / "report.md").write_text("\n".join(md) + "\n")
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(suite)), 3.8))
    width = 0.8 / len(by)
    for i, (n, c) in enumerate(by.items()):
        xs = [j + i * width for j in range(len(suite))]
        vals = [c["benchmarks"][b.name] for b in suite]
        err = [[v - (cis[n][b.name] or (v, v))[0] for v, b in zip(vals, suite)],
               [(cis[n][b.name] or (v, v))[1] - v for v, b in zip(vals, suite)]]
        ax.bar(xs, vals, width, yerr=err, capsize=3, label=n)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(suite))], [b.name for b in suite])
    ax.set_ylabel("score (95% CI)")
    ax.set_title("frozen-encoder MLLM on the generated benchmarks")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "scores.png", dpi=120)
    plt.close(fig)
    (out / "summary.json").write_text(json.dumps({"cells": {n: {"benchmarks": c["benchmarks"],
                                                                "averages": c["averages"],
                                                                "intervals": cis[n]} for n, c in by.items()},
                                                  "compare": cmp, "budget": budget, "timings": timings,
                                                  "verdict": verdict(by, cmp),
                                                  "probes": probes}, indent=1, default=float))
    return out
