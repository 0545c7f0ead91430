import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sp_stats
from statsmodels.stats.multitest import multipletests

from drift_jax import stats
from drift_jax.errors import DriftJaxError


def test_calibrated_p_value_formula():
    control = np.array([0.9, 0.8, 0.7, 0.95])
    assert stats.calibrated_p_value(control, 0.5) == 1 / 5  # below every control
    assert stats.calibrated_p_value(control, 0.8) == 3 / 5  # 0.8 and 0.7 are <= 0.8
    assert stats.calibrated_p_value(control, 1.0) == 1.0
    per_class = stats.calibrated_p_value(np.array([[0.9, 0.1], [0.8, 0.2]]), np.array([0.5, 0.5]))
    np.testing.assert_allclose(per_class, [1 / 3, 1.0])


@given(st.lists(st.floats(0, 1), min_size=1, max_size=30), st.floats(0, 1), st.floats(0, 1))
def test_calibrated_p_value_bounds_and_monotonicity(control, a, b):
    m = len(control)
    pa, pb = stats.calibrated_p_value(control, a), stats.calibrated_p_value(control, b)
    assert 1 / (m + 1) <= pa <= 1
    if a <= b:
        assert pa <= pb


@settings(max_examples=50)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=20))
def test_corrections_match_independent_implementations(p):
    p = np.array(p)
    np.testing.assert_allclose(stats.holm(p), multipletests(p, method="holm")[1], atol=1e-12)
    np.testing.assert_allclose(stats.benjamini_hochberg(p),
                               multipletests(p, method="fdr_bh")[1], atol=1e-12)
    assert (stats.holm(p) >= stats.benjamini_hochberg(p) - 1e-12).all()


def test_permutation_test_agrees_with_scipy():
    """Our one-sided test (mean of y below mean of x) against `scipy.stats.permutation_test`
    with the same statistic and the same (k + 1) / (n + 1) estimate: equal within Monte-Carlo
    error, on a shifted pair and an unshifted one."""
    rng = np.random.default_rng(3)
    for shift in (0.0, 0.3):
        x, y = rng.normal(shift, 1.0, 60), rng.normal(0.0, 1.0, 45)
        ours = stats.permutation_test(x, y, jax.random.key(1), 4000)["p_value"]
        theirs = sp_stats.permutation_test(
            (x, y), lambda a, b, axis: a.mean(axis) - b.mean(axis), alternative="greater",
            n_resamples=4000, rng=np.random.default_rng(0)).pvalue
        assert abs(ours - theirs) < 0.03, (shift, ours, theirs)


def test_permutation_test_finds_a_shift_and_not_its_absence():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, 200)
    shifted = stats.permutation_test(x, rng.normal(0.0, 1.0, 200), jax.random.key(0))
    same = stats.permutation_test(x, rng.normal(1.0, 1.0, 200), jax.random.key(0))
    assert shifted["p_value"] < 0.01 and same["p_value"] > 0.05
    assert 1 / 2001 <= shifted["p_value"] <= 1


def test_batched_permutation_tests_equal_one_test_at_a_time():
    rng = np.random.default_rng(1)
    x, y = rng.normal(1.0, 1.0, (5, 40)), rng.normal(0.5, 1.0, (5, 12))
    keys = jax.random.split(jax.random.key(2), 5)
    batched = stats.permutation_tests(x, y, keys, 500)
    one_at_a_time = [stats.permutation_test(x[k], y[k], keys[k], 500) for k in range(5)]
    np.testing.assert_array_equal(batched["p_value"], [t["p_value"] for t in one_at_a_time])
    np.testing.assert_allclose(batched["statistic"], [t["statistic"] for t in one_at_a_time],
                               rtol=1e-6)
    with pytest.raises(DriftJaxError, match="x \\[K, nx\\]"):
        stats.permutation_tests(x, y[:4], keys, 500)


@pytest.mark.parametrize("stat", ["mean", "auc", "ks"])
def test_distribution_statistics_stay_calibrated_and_find_a_one_class_change(stat):
    """Simulated gray scores: base, production and M = 19 controls, each model with its own
    per-class offset (models differ even without drift). With no drift the production model is
    one more control and the largest-deficit rank p-value is exact: its false-positive rate at
    0.05 is 0.05. A 3-sd shift of one class of ten is found (AUC and KS against the base model's
    scores saturate once the distributions separate, so they find it less often than the mean:
    about 0.75 against 1.0 in this simulation)."""
    rng = np.random.default_rng(0)
    m, c, s = 19, 10, 16

    def p_value(shift: float) -> float:
        values = rng.normal(size=(m + 2, c, s)) + rng.normal(0, 0.3, (m + 2, c, 1))
        values[0] += 0.5  # the base model's own gray data scores higher
        values[1, 3] -= shift  # production: class 3 changed
        per_class = stats.per_class_statistic(values, values > 0, stat)
        overall = stats.largest_deficit(per_class, np.arange(1, m + 2))
        return float(stats.calibrated_p_value(overall[2:], overall[1]))

    null = np.array([p_value(0.0) for _ in range(400)])
    assert abs((null <= 0.05).mean() - 0.05) < 0.035
    assert (np.array([p_value(3.0) for _ in range(100)]) <= 0.05).mean() > 0.6


def test_per_class_statistics_match_direct_computations():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(3, 2, 7))
    auc = stats.per_class_statistic(values, values > 0, "auc")
    ks = stats.per_class_statistic(values, values > 0, "ks")
    for g in range(3):
        for k in range(2):
            x, b = values[g, k], values[0, k]
            np.testing.assert_allclose(
                auc[g, k], sp_stats.mannwhitneyu(x, b).statistic / (len(x) * len(b)))
            np.testing.assert_allclose(ks[g, k], -sp_stats.ks_2samp(x, b).statistic)
    np.testing.assert_allclose(stats.per_class_statistic(values, values > 0, "fraction"),
                               (values > 0).mean(-1))
