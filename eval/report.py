"""Comparison reports: one table of every evaluated cell (CSV + Markdown) beside the paper's rows, per-benchmark
bar charts, and for two cells the per-benchmark difference with a paired bootstrap interval over the samples."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from eval.paper import paper_rows_1p5b
from eval.stats import paired_bootstrap
from eval.suites import PAPER_14, SUITES, averages

PER_SAMPLE = {"anls,none": "anls", "relaxed_overall,none": "relaxed_overall", "exact_match,none": "exact_match"}


def load_cells(paths: list[str | Path]) -> list[dict]:
    """``scores.json`` files (or directories holding one) written by ``genlip-eval run``."""
    cells = []
    for p in paths:
        p = Path(p)
        f = p / "scores.json" if p.is_dir() else p
        if not f.exists():
            raise FileNotFoundError(f"{p} holds no scores.json (run `genlip-eval run` first)")
        cell = json.loads(f.read_text())
        cell.setdefault("name", f.parent.name)
        cells.append(cell)
    return cells


def table(cells: list[dict], with_paper: bool = True):
    """A pandas DataFrame: one row per cell (and the paper's rows for the paper14 suite), benchmark columns in suite
    order, then group averages and ALL AVG."""
    rows = []
    for c in cells:
        rows.append({"source": "ours", "cell": c["name"], "suite": c["suite"], **c["benchmarks"], **c["averages"]})
    if with_paper and any(c["suite"] == "paper14" for c in cells):
        for enc, vals in paper_rows_1p5b().items():
            bench = {b.name: vals[b.name] for b in PAPER_14}
            rows.append({"source": "paper", "cell": f"{enc} (Qwen2.5-1.5B)", "suite": "paper14", **bench,
                         **averages(PAPER_14, bench), "ALL AVG (reported)": vals["ALL AVG (reported)"]})
    return pd.DataFrame(rows)


def per_sample_scores(cell: dict, task: str, metric: str) -> dict[int, float]:
    """``{doc_id: score}`` from lmms-eval's ``--log_samples`` output of a cell."""
    key = PER_SAMPLE.get(metric)
    if key is None:
        raise KeyError(f"{metric} is a corpus-level metric; no per-sample scores to bootstrap")
    task = cell.get("tasks", {}).get(task, task)  # local exports run under another task name
    files = list(Path(cell["samples_dir"]).glob(f"*samples_{task}.jsonl"))
    if not files:
        raise FileNotFoundError(f"no logged samples for {task} in {cell['samples_dir']}")
    out = {}
    for line in sorted(files)[-1].read_text().splitlines():
        rec = json.loads(line)
        out[int(rec["doc_id"])] = float(rec[key])
    return out


def compare(a: dict, b: dict, n_resamples: int = 10000) -> list[dict]:
    """Per benchmark of the shared suite: ``a - b`` on the paper's scale with a 95% paired bootstrap interval."""
    if a["suite"] != b["suite"]:
        raise ValueError(f"cells evaluated on different suites: {a['suite']} vs {b['suite']}")
    rows = []
    for bench in SUITES[a["suite"]]:
        row = {"benchmark": bench.name, "a": a["benchmarks"][bench.name], "b": b["benchmarks"][bench.name]}
        try:
            sa, sb = per_sample_scores(a, bench.task, bench.metric), per_sample_scores(b, bench.task, bench.metric)
        except (KeyError, FileNotFoundError) as e:
            rows.append({**row, "diff": row["a"] - row["b"], "note": str(e.args[0])})
            continue
        ids = sorted(set(sa) & set(sb))
        r = paired_bootstrap([sa[i] for i in ids], [sb[i] for i in ids], n_resamples)
        rows.append({**row, "diff": r.diff * bench.scale, "ci_low": r.low * bench.scale,
                     "ci_high": r.high * bench.scale, "p": r.p_two_sided, "n": r.n, "significant": r.significant})
    return rows


def write_report(cells: list[dict], out: str | Path, compare_pair: tuple[str, str] | None = None) -> Path:
    """``out/report.csv``, ``out/report.md``, ``out/<suite>.png`` and, for a pair, ``out/compare.csv``."""
    import matplotlib  # optional: the tools/eval extras; only reports draw charts

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: as above

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = table(cells)
    df.to_csv(out / "report.csv", index=False)
    md = ["# Evaluation report", ""]
    for suite, sub in df.groupby("suite", sort=False):
        cols = [b.name for b in SUITES[suite]]
        extra = [c for c in sub.columns if c not in cols + ["source", "cell", "suite"] and sub[c].notna().any()]
        md += [f"## {suite}", "", sub[["source", "cell", *cols, *extra]].to_markdown(index=False, floatfmt=".1f"), ""]
        ours = sub[sub["source"] == "ours"]
        fig, ax = plt.subplots(figsize=(max(6, len(cols) * 0.9), 3.5))
        width = 0.8 / max(len(ours), 1)
        for i, (_, r) in enumerate(ours.iterrows()):
            ax.bar([j + i * width for j in range(len(cols))], [r[c] for c in cols], width, label=r["cell"])
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))], cols, rotation=30, ha="right")
        ax.set_ylabel("score (paper scale)")
        ax.set_title(f"{suite}: per-benchmark scores by cell")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{suite}.png", dpi=120)
        plt.close(fig)
    if compare_pair:
        by = {c["name"]: c for c in cells}
        missing = [n for n in compare_pair if n not in by]
        if missing:
            raise KeyError(f"no cell named {missing}; cells: {sorted(by)}")
        rows = compare(by[compare_pair[0]], by[compare_pair[1]])
        cmp = pd.DataFrame(rows)
        cmp.to_csv(out / "compare.csv", index=False)
        if "significant" in cmp:
            cmp["significant"] = cmp["significant"].map({True: "yes", False: "no"})
        cmp = cmp.astype(object).where(cmp.notna(), "")
        md += [f"## {compare_pair[0]} - {compare_pair[1]} (95% paired bootstrap)", "",
               cmp.to_markdown(index=False, floatfmt=".2f"), ""]
    (out / "report.md").write_text("\n".join(md))
    return out
