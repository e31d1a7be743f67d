"""Is a difference between two encoders real? Paired bootstrap over the samples both were scored on.

Written here rather than with ``scipy.stats.bootstrap``: scipy is not a dependency of the project (it only arrives with
lmms-eval's), and two of the three intervals are not statistics of one array that scipy resamples: the paired
difference resamples the documents both cells answered, and the CIDEr intervals recompute a corpus-level metric (IDF
weights included) on every resample. For the plain mean, :func:`bootstrap_ci` is the percentile method and agrees
with ``scipy.stats.bootstrap(method="percentile")`` (``tests/eval/test_eval_stats.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer


@dataclass
class PairedDiff:
    diff: float  # mean(a) - mean(b)
    low: float  # confidence interval of the difference
    high: float
    p_two_sided: float  # bootstrap estimate of P(difference has the other sign)
    n: int

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_bootstrap(a, b, n_resamples: int = 10000, confidence: float = 0.95, seed: int = 0) -> PairedDiff:
    """Paired bootstrap of ``mean(a) - mean(b)`` for per-sample scores of two models on the same samples.

    >>> r = paired_bootstrap([1, 1, 1, 0] * 50, [0, 1, 0, 0] * 50)
    >>> round(r.diff, 2), r.significant
    (0.5, True)
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired scores must be two equal-length 1-D sequences, got {a.shape} and {b.shape}")
    d = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_resamples, d.size))
    means = d[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    observed = float(d.mean())
    other_side = float(np.mean(means <= 0)) if observed > 0 else float(np.mean(means >= 0))
    return PairedDiff(observed, float(low), float(high), min(1.0, 2 * other_side), int(d.size))


def bootstrap_ci(values, n_resamples: int = 10000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(values)`` (per-sample scores of one model).

    >>> lo, hi = bootstrap_ci([0, 1] * 100)
    >>> 0.42 < lo < 0.5 < hi < 0.58
    True
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"need a non-empty 1-D sequence of scores, got shape {v.shape}")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_resamples, v.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def cider_samples(cell: dict, task: str, key: str) -> tuple[dict, dict]:
    """Tokenised ``(references, prediction)`` per image from a caption task's logged samples (COCO's own PTB
    tokenizer, as lmms-eval scores them)."""
    task = cell.get("tasks", {}).get(task, task)
    files = sorted(Path(cell["samples_dir"]).glob(f"*samples_{task}.jsonl"))
    if not files:
        raise FileNotFoundError(f"no logged samples for {task} in {cell['samples_dir']}")
    gts, res = {}, {}
    for i, line in enumerate(files[-1].read_text().splitlines()):
        rec = json.loads(line)[key]
        gts[i] = [{"caption": a} for a in rec["answer"]]
        res[i] = [{"caption": rec["pred"]}]
    tok = PTBTokenizer()
    return tok.tokenize(gts), tok.tokenize(res)


def cider_paired_bootstrap(a: dict, b: dict, bench, n_resamples: int = 1000, confidence: float = 0.95,
                           seed: int = 0) -> PairedDiff:
    """``CIDEr(a) - CIDEr(b)`` on the paper's scale with a paired bootstrap over images: each resample draws the same
    images for both cells and recomputes both corpus-level scores."""
    key = bench.metric.split(",")[0]
    (ga, ra), (gb, rb) = cider_samples(a, bench.task, key), cider_samples(b, bench.task, key)
    ids = sorted(set(ga) & set(gb))
    if not ids:
        raise ValueError(f"no common samples for {bench.task}")

    def score(g, r, pick):
        return Cider().compute_score({j: g[ids[k]] for j, k in enumerate(pick)},
                                     {j: r[ids[k]] for j, k in enumerate(pick)})[0]

    full = np.arange(len(ids))
    observed = score(ga, ra, full) - score(gb, rb, full)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_resamples):
        pick = rng.integers(0, len(ids), size=len(ids))
        diffs.append(score(ga, ra, pick) - score(gb, rb, pick))
    diffs = np.asarray(diffs)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    other_side = float(np.mean(diffs <= 0)) if observed > 0 else float(np.mean(diffs >= 0))
    s = bench.scale
    return PairedDiff(observed * s, float(low) * s, float(high) * s, min(1.0, 2 * other_side), len(ids))


def cider_bootstrap_ci(cell: dict, bench, n_resamples: int = 1000, confidence: float = 0.95,
                       seed: int = 0) -> tuple[float, float] | None:
    """Bootstrap interval of a corpus-level CIDEr: resample images, recompute CIDEr (its IDF included) each time.
    ``None`` for metrics that are not COCO-style CIDEr."""
    if not bench.metric.endswith("CIDEr,none"):
        return None
    gts, res = cider_samples(cell, bench.task, bench.metric.split(",")[0])
    ids = sorted(gts)
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(n_resamples):
        pick = rng.integers(0, len(ids), size=len(ids))
        g = {j: gts[ids[k]] for j, k in enumerate(pick)}
        r = {j: res[ids[k]] for j, k in enumerate(pick)}
        scores.append(Cider().compute_score(g, r)[0])
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(scores, [alpha, 1 - alpha])
    return float(lo) * bench.scale, float(hi) * bench.scale
