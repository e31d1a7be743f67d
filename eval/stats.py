"""Is a difference between two encoders real? Paired bootstrap over the samples both were scored on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
