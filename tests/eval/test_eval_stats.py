"""Paired bootstrap: covers the true difference at the stated rate, and does not call noise a difference."""

import numpy as np
import pytest

from eval.stats import bootstrap_ci, paired_bootstrap


def test_identical_models_are_not_different():
    a = np.random.default_rng(0).integers(0, 2, 300)
    r = paired_bootstrap(a, a.copy())
    assert r.diff == 0 and r.low == 0 and r.high == 0 and not r.significant


def test_interval_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    covered = 0
    trials = 200
    for t in range(trials):
        a = rng.random(200) < 0.60  # true accuracy 60% vs 55%
        b = rng.random(200) < 0.55
        r = paired_bootstrap(a, b, n_resamples=2000, seed=t)
        covered += r.low <= 0.05 <= r.high
    assert 0.88 <= covered / trials <= 0.99


def test_clear_difference_is_significant_and_noise_is_not():
    rng = np.random.default_rng(2)
    base = rng.random(500) < 0.5
    better = base | (rng.random(500) < 0.3)
    assert paired_bootstrap(better, base).significant
    flip = base.copy()
    flip[:3] = ~flip[:3]  # three samples differ
    assert not paired_bootstrap(flip, base).significant


def test_mismatched_inputs_are_errors():
    with pytest.raises(ValueError, match=r"two equal-length 1-D sequences, got \(2,\) and \(1,\)"):
        paired_bootstrap([1, 0], [1])


def test_percentile_interval_agrees_with_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    values = np.random.default_rng(3).binomial(1, 0.63, size=400).astype(float)
    ours = bootstrap_ci(values, n_resamples=20000)
    ref = scipy_stats.bootstrap((values,), np.mean, n_resamples=20000, method="percentile", confidence_level=0.95,
                                random_state=np.random.default_rng(0)).confidence_interval
    assert ours[0] == pytest.approx(ref.low, abs=0.006) and ours[1] == pytest.approx(ref.high, abs=0.006)
