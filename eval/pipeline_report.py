"""The pipeline's report: every score with its interval, GenLIP minus each other encoder with paired intervals, the
probes, and a verdict on the paper's ordering that refuses to read meaning into answers that ignore the image."""

from __future__ import annotations

import json
from pathlib import Path

from eval.pipeline_probes import PROBE_TASKS
from eval.report import compare, distinct_answers, per_sample_scores, write_report
from eval.stats import bootstrap_ci, cider_bootstrap_ci, cider_paired_bootstrap
from eval.suites import SUITES

READING_GROUP = "Doc&OCR"


def cell_intervals(cell: dict, resamples: int) -> dict[str, tuple[float, float] | None]:
    """95% bootstrap interval of every benchmark's score (paper scale), resampling the evaluated samples."""
    out = {}
    for b in SUITES[cell["suite"]]:
        try:
            scores = per_sample_scores(cell, b.task, b.metric)
        except (KeyError, FileNotFoundError):
            scores = None
        if scores is None:
            out[b.name] = cider_bootstrap_ci(cell, b, resamples)
        else:
            lo, hi = bootstrap_ci(list(scores.values()), resamples)
            out[b.name] = (lo * b.scale, hi * b.scale)
    return out


def verdict(cells: dict[str, dict], cmp: dict[str, list[dict]]) -> list[str]:
    """Did the paper's ordering reproduce? Generative > contrastive (ALL AVG, per benchmark with its interval) and
    the largest GenLIP - contrastive gap on the reading (Doc&OCR) benchmarks."""
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
    # a benchmark where either MLLM gives one answer to everything says nothing about the encoders: not counted
    blind = set(const.get("genlip", [])) | set(const.get("contrastive", []))
    sig = [r for r in cmp["contrastive"] if r.get("significant") and r["benchmark"] not in blind]
    lines.append(f"- Per benchmark (95% paired bootstrap), GenLIP - contrastive is significant on "
                 f"{len(sig)} of {len(cmp['contrastive'])}: " + (", ".join(
                     f"{r['benchmark']} {r['diff']:+.1f} [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}]" for r in sig)
                     or "none") + (f" (not counted: {', '.join(sorted(blind))}, answered without looking at the "
                                   "image)" if blind else "") + ".")
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
    import matplotlib  # optional: only the report draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: after the Agg backend is chosen

    out.mkdir(parents=True, exist_ok=True)
    write_report(cells, out / "table")
    by = {c["name"]: c for c in cells}
    suite = SUITES[cells[0]["suite"]]
    cis = {n: cell_intervals(c, resamples) for n, c in by.items()}
    cmp = {other: compare(by["genlip"], by[other], resamples) for other in ("contrastive", "random")}
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
