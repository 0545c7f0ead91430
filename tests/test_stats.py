import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special
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
@pytest.mark.slow
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


def _simulated_p_value(rng, stat: str, combine: str, shifts: dict) -> float:
    """Simulated gray scores: base, production and M = 19 controls, each model with its own
    per-class offset (models differ even without drift); ``shifts`` {class: sd} lowers the
    production model's scores of those classes."""
    m, c, s = 19, 10, 16
    values = rng.normal(size=(m + 2, c, s)) + rng.normal(0, 0.3, (m + 2, c, 1))
    values[0] += 0.5  # the base model's own gray data scores higher
    for k, shift in shifts.items():
        values[1, k] -= shift
    if stat == "logit_mean":  # probabilities near their ceiling, as a target probability is
        values = special.expit(values + 3.0)
    per_class = stats.per_class_statistic(values, values > 0, stat)
    overall = stats.combine_classes(per_class, np.arange(1, m + 2), combine)
    return float(stats.calibrated_p_value(overall[2:], overall[1]))


@pytest.mark.parametrize("combine", ["largest_deficit", "two_largest_deficits"])
@pytest.mark.parametrize("stat", ["mean", "logit_mean", "auc", "ks"])
@pytest.mark.slow
def test_distribution_statistics_stay_calibrated_and_find_a_one_class_change(stat, combine):
    """With no drift the production model is one more control and the rank p-value of a
    leave-one-out standardised combination is exact: its false-positive rate at 0.05 is 0.05. A
    3-sd shift of one class of ten is found (AUC and KS against the base model's scores saturate
    once the distributions separate, so they find it less often than the mean: about 0.75
    against 1.0 in this simulation)."""
    rng = np.random.default_rng(0)
    null = np.array([_simulated_p_value(rng, stat, combine, {}) for _ in range(400)])
    assert abs((null <= 0.05).mean() - 0.05) < 0.035
    found = [_simulated_p_value(rng, stat, combine, {3: 3.0}) for _ in range(100)]
    assert (np.array(found) <= 0.05).mean() > 0.6


def test_two_largest_deficits_find_a_two_class_change_more_often():
    """A change that lives in two classes (a swap, a relabel a -> b), each by 1.2 sd: averaging
    over ten classes dilutes it, the single largest deficit uses half of it."""
    power = {}
    for combine in stats.COMBINATIONS:
        rng = np.random.default_rng(3)
        power[combine] = np.mean([_simulated_p_value(rng, "mean", combine, {3: 1.2, 5: 1.2})
                                  <= 0.05 for _ in range(200)])
    assert power["two_largest_deficits"] > power["largest_deficit"] + 0.05
    assert power["two_largest_deficits"] > power["class_mean"] + 0.05
    with pytest.raises(DriftJaxError, match="combine must be one of"):
        stats.combine_classes(np.zeros((3, 2)), np.arange(1, 3), "median")


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
    probabilities = special.expit(values)
    np.testing.assert_allclose(stats.per_class_statistic(probabilities, None, "logit_mean"),
                               special.logit(probabilities.mean(-1)))
    np.testing.assert_allclose(stats.per_class_statistic(values, values > 0, "fraction"),
                               (values > 0).mean(-1))


def test_the_min_rank_omnibus_stays_calibrated_and_takes_the_better_statistic():
    """Two statistics per model; production shifted in the second only. The min-rank combination
    keeps the false-positive rate at alpha (every model is ranked alike) and finds the shift far
    more often than the statistic that does not carry it; with M = 19 it pays for the second
    statistic: about half as often as the one that carries it alone (0.38 against 0.82)."""
    rng = np.random.default_rng(4)
    m = 19

    def p_values(shift):
        scores = rng.normal(size=(2, m + 2))
        scores[1, 1] -= shift  # model 1 is the production model, 2.. the controls
        combined = stats.min_rank(scores, np.arange(1, m + 2))
        one = [stats.calibrated_p_value(scores[k, 2:], scores[k, 1]) for k in range(2)]
        return float(stats.calibrated_p_value(combined[2:], combined[1])), one

    null = np.array([p_values(0.0)[0] for _ in range(2000)])
    assert abs((null <= 0.05).mean() - 0.05) < 0.015
    shifted = [p_values(3.0) for _ in range(300)]
    omnibus = np.mean([p <= 0.05 for p, _ in shifted])
    assert omnibus > np.mean([one[0] <= 0.05 for _, one in shifted]) + 0.3
    assert omnibus > 0.4 * np.mean([one[1] <= 0.05 for _, one in shifted])


def test_prediction_p_value_is_calibrated_counts_models_once_and_finds_a_shift():
    """A new model from the controls' distribution: P(p <= alpha) = alpha (exact for normal
    scores); a shifted one is found. Pooling each model's images would reject far too often."""
    rng = np.random.default_rng(0)
    sims, controls, images = 20000, 49, 16
    model_effect = rng.normal(0, 1, (sims, controls + 1))
    per_image = model_effect[..., None] + rng.normal(0, 1, (sims, controls + 1, images))
    scores = per_image.mean(-1)  # each model's class statistic
    p = stats.prediction_p_value(scores[:, 1:].T, scores[:, 0])
    assert abs((p <= 0.05).mean() - 0.05) < 0.006
    assert stats.prediction_p_value(scores[:, 1:].T, scores[:, 0] - 4.0).mean() < 0.01
    # the pooled per-image comparison the per-class test used to make: anti-conservative
    pooled = sp_stats.ttest_ind(per_image[:, 0], per_image[:, 1:].reshape(sims, -1), axis=1,
                                alternative="less").pvalue
    assert (pooled <= 0.05).mean() > 0.2
    with pytest.raises(DriftJaxError, match="two control"):
        stats.prediction_p_value(scores[:1, 1:2].T, scores[:1, 0])


def test_fisher_tests_match_scipys_exact_test_and_a_permutation_test():
    """`fisher_tests`: each row's one-sided Fisher exact p-value that y holds more ones than x
    (scipy's on the 2 x 2 table), which the permutation test of the same 0/1 samples approaches."""
    rng = np.random.default_rng(0)
    x = rng.random((4, 60)) < 0.1
    y = rng.random((4, 12)) < np.array([0.1, 0.3, 0.5, 0.0])[:, None]
    found = stats.fisher_tests(x, y)
    for row, p in enumerate(found["p_value"]):
        table = [[y[row].sum(), (~y[row]).sum()], [x[row].sum(), (~x[row]).sum()]]
        assert p == pytest.approx(sp_stats.fisher_exact(table, alternative="greater").pvalue)
    np.testing.assert_allclose(found["statistic"], y.mean(1) - x.mean(1))
    assert found["p_value"][2] < 0.01 < 0.5 < found["p_value"][3]
    # permutation_tests asks whether its second sample is lower: "not answered j"
    permuted = stats.permutation_tests(~x, ~y, jax.random.split(jax.random.key(0), 4), 4000)
    np.testing.assert_allclose(permuted["p_value"], found["p_value"], atol=0.02)
