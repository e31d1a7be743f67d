"""Comparison reports: one table of every evaluated cell (CSV + Markdown) beside the paper's rows, per-benchmark
bar charts, and for two cells the per-benchmark difference with a paired bootstrap interval over the samples."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from eval.paper import paper_all_avg_rows, paper_rows_1p5b
from eval.stats import bootstrap_ci, paired_bootstrap
from eval.suites import PAPER_14, SUITES, averages

PER_SAMPLE = {"anls,none": "anls", "relaxed_overall,none": "relaxed_overall", "exact_match,none": "exact_match"}


def load_cells(paths: list[str | Path]) -> list[dict]:
    """``scores.json`` files (or directories holding one) written by ``genlip-eval run``, or a sweep's ``out``
    directory (each of its evaluated cells and suites). A cell without a name
    (a sweep names its cells) is named by the shortest end of its directory path that no other cell shares
    (``A/synth`` and ``B/synth`` become ``A/synth`` and ``B/synth``, not ``synth`` twice); two cells with one name
    are an error, never a comparison of a cell with itself."""
    cells, dirs = [], []
    for p in map(Path, paths):
        if p.is_dir() and not (p / "scores.json").exists() and (swept := sorted(p.glob("cells/*/eval/*/scores.json"))):
            files = swept  # a sweep's out directory: every evaluated cell and suite
        else:
            files = [p / "scores.json" if p.is_dir() else p]
        for f in files:
            if not f.exists():
                raise FileNotFoundError(f"{p} holds no scores.json (run `genlip-eval run` first, or give a sweep's "
                                        "out directory)")
            cells.append(json.loads(f.read_text()))
            dirs.append(f.resolve().parent)
    for cell, d in zip(cells, dirs):
        if "name" not in cell:
            others = [o for o in dirs if o != d]
            n = 1
            while n < len(d.parts) and any(o.parts[-n:] == d.parts[-n:] for o in others):
                n += 1
            cell["name"] = "/".join(d.parts[-n:])
    # one cell may hold several suites (a sweep evaluates each cell on each of its suites), each suite once
    keys = [(c["name"], c["suite"]) for c in cells]
    dup = sorted({n for n, s in keys if keys.count((n, s)) > 1})
    if dup:
        raise ValueError(f"two or more cells are named {dup}: give each result directory once")
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
        for label, avg in paper_all_avg_rows().items():  # rows the paper gives as an average only
            rows.append({"source": "paper", "cell": label, "suite": "paper14", "ALL AVG (reported)": avg})
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


def distinct_answers(cell: dict, task: str) -> int:
    """How many different answers a cell gave on a task (from lmms-eval's logged samples; -1 without logs)."""
    task = cell.get("tasks", {}).get(task, task)
    files = sorted(Path(cell["samples_dir"]).glob(f"*samples_{task}.jsonl"))
    if not files:
        return -1
    return len({json.dumps(json.loads(line).get("filtered_resps")) for line in files[-1].read_text().splitlines()})


CONSTANT = "one answer to every question: the answers do not depend on the image"


def compare(a: dict, b: dict, n_resamples: int = 10000) -> list[dict]:
    """Per benchmark of the shared suite: ``a - b`` on the paper's scale with a 95% paired bootstrap interval. A
    cell that gave one answer to every question is not read as a difference in seeing: the row says so and is
    never marked significant."""
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
        const = [c["name"] for c in (a, b) if distinct_answers(c, bench.task) == 1]
        rows.append({**row, "diff": r.diff * bench.scale, "ci_low": r.low * bench.scale,
                     "ci_high": r.high * bench.scale, "p": r.p_two_sided, "n": r.n,
                     "significant": r.significant and not const,
                     **({"note": f"{', '.join(const)}: {CONSTANT}"} if const else {})})
    return rows


def score_interval(cell: dict, bench, n_resamples: int = 2000) -> tuple[float, float] | None:
    """A 95% bootstrap interval of a cell's score on one benchmark (paper scale), from its per-sample scores; None
    for corpus-level metrics (CIDEr) or without logged samples."""
    try:
        scores = per_sample_scores(cell, bench.task, bench.metric)
    except (KeyError, FileNotFoundError):
        return None
    low, high = bootstrap_ci(list(scores.values()), n_resamples)
    return low * bench.scale, high * bench.scale


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
        by_name = {c["name"]: c for c in cells if c["suite"] == suite}
        md += [f"- {name}: " + (f"at most {by_name[name]['limit']} samples per task (`--limit`), not the full "
                                "benchmarks" if by_name[name].get("limit") else "full benchmarks (no `--limit`)")
               for name in ours["cell"]] + [""]
        fig, ax = plt.subplots(figsize=(max(6, len(cols) * 0.9), 3.5))
        width = 0.8 / max(len(ours), 1)
        for i, (_, r) in enumerate(ours.iterrows()):
            values = [r[c] for c in cols]
            cis = [score_interval(by_name[r["cell"]], b) for b in SUITES[suite]]
            err = [[v - ci[0] if ci else 0 for v, ci in zip(values, cis)],
                   [ci[1] - v if ci else 0 for v, ci in zip(values, cis)]]
            # a zero bar is drawn as its outline, so a score of 0 is seen, not mistaken for a missing bar
            xs = [j + i * width for j in range(len(cols))]
            ax.bar(xs, values, width, label=r["cell"], yerr=err, capsize=2, edgecolor="black", linewidth=0.6)
            for x, v, hi in zip(xs, values, err[1]):  # the value above its interval
                ax.annotate(f"{v:.1f}", (x, v + hi), xytext=(0, 2), textcoords="offset points", ha="center",
                            va="bottom", fontsize=6)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))], cols, rotation=30, ha="right")
        ax.set_ylabel("score (paper scale), 95% CI")
        ax.set_title(f"{suite}: per-benchmark scores by cell")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{suite}.png", dpi=120)
        plt.close(fig)
    if compare_pair:
        names = {c["name"] for c in cells}
        missing = [n for n in compare_pair if n not in names]
        if missing:
            raise KeyError(f"no cell named {missing}; cells: {sorted(names)}")
        if compare_pair[0] == compare_pair[1]:
            raise ValueError(f"--compare needs two different cells, got {compare_pair[0]!r} twice")
        a, b = ({c["suite"]: c for c in cells if c["name"] == n} for n in compare_pair)
        shared = [s for s in a if s in b]
        if not shared:
            raise ValueError(f"{compare_pair[0]} and {compare_pair[1]} share no suite ({sorted(a)} vs {sorted(b)})")
        rows = [{**({"suite": s} if len(shared) > 1 else {}), **r} for s in shared for r in compare(a[s], b[s])]
        cmp = pd.DataFrame(rows)
        cmp.to_csv(out / "compare.csv", index=False)
        if "significant" in cmp:
            cmp["significant"] = cmp["significant"].map({True: "yes", False: "no"})
        if "n" in cmp:  # a sample count, not a score: no decimals
            cmp["n"] = cmp["n"].map(lambda v: "" if pd.isna(v) else str(int(v)))
        cmp = cmp.astype(object).where(cmp.notna(), "")
        md += [f"## {compare_pair[0]} - {compare_pair[1]} (95% paired bootstrap)", "",
               cmp.to_markdown(index=False, floatfmt=".2f"), ""]
    (out / "report.md").write_text("\n".join(md))
    return out
