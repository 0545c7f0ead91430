"""The decision pipeline end to end on simulated models: per-image scores -> per-class
statistics -> leave-one-out standardisation -> combination -> omnibus -> rank p-value, and the
per-run check of the exchangeability it rests on (`detect.diagnostics`)."""

import numpy as np
import pytest
from scipy import special

from drift_jax import stats
from drift_jax.detect import (
    LOCALISATION_STATISTICS,
    OMNIBUS,
    DetectConfig,
    combined_scores,
    null_checks,
    recorded_combinations,
)

CLASSES, SAMPLES = 10, 8


def _model_effects(rng, seeds, models, shared):
    """Per model and class effects [S, models, C] with unit variance: exchangeable when
    ``shared`` is 0; else the controls (models 2..) share a per-class component of correlation
    ``shared`` that the base and production models do not (controls trained on overlapping data,
    the production model on its own)."""
    own = rng.normal(size=(seeds, models, CLASSES))
    common = rng.normal(size=(seeds, 1, CLASSES))
    own[:, 2:] = np.sqrt(shared) * common + np.sqrt(1 - shared) * own[:, 2:]
    return own


def simulated_statistics(rng, seeds, controls, shared=0.0, shift=None):
    """The per-class statistics a run computes {name: [S, 2 + M, C]}: the attack's from
    per-image target probabilities, the model statistics as mean logits. ``shift``: {class: sd}
    subtracted from the production model (a drift in those classes)."""
    models = 2 + controls
    out = {}
    effects = {k: _model_effects(rng, seeds, models, shared) for k in ("attack", *MODEL)}
    for e in effects.values():
        for c, sd in (shift or {}).items():
            e[:, 1, c] -= sd
    logits = 3.0 + 0.5 * effects["attack"][..., None] + rng.normal(
        size=(seeds, models, CLASSES, SAMPLES))
    values = special.expit(logits)
    for name in ("mean", "logit_mean", "auc"):
        out[name] = stats.per_class_statistic(values, values > 0.5, name)
    for name in MODEL:
        out[name] = 5.0 + effects[name]
    return out


MODEL = ("self_confidence", "reverse")


def _p_values(class_statistics) -> dict[str, np.ndarray]:
    combined = combined_scores(class_statistics, recorded_combinations(DetectConfig()))
    return {f"{s}/{c}": stats.calibrated_p_value(o[:, 2:].T, o[:, 1])
            for (s, c), o in combined.items()}


@pytest.mark.parametrize("controls", [19, 49])
def test_every_part_of_the_default_and_the_omnibus_hold_their_level(controls):
    """4,000 exchangeable nulls: each part of the default omnibus and the omnibus itself reject
    at the attainable level floor(alpha (M + 1)) / (M + 1), within 0.01."""
    rng = np.random.default_rng(controls)
    p = [_p_values(simulated_statistics(rng, 500, controls)) for _ in range(8)]
    p = {k: np.concatenate([chunk[k] for chunk in p]) for k in p[0]}
    assert set(p) == {f"{s}/{c}" for s, c in (*OMNIBUS, ("omnibus", "min_rank"))}
    attainable = np.floor(0.05 * (controls + 1)) / (controls + 1)
    for name, values in p.items():
        assert abs((values <= 0.05).mean() - attainable) <= 0.01, (name, (values <= 0.05).mean())
    # and the default finds a two-class drift
    shifted = _p_values(simulated_statistics(rng, 200, controls, shift={0: 3.0, 1: 3.0}))
    assert (shifted["omnibus/min_rank"] <= 0.05).mean() > 0.8


def test_the_null_check_holds_its_level_and_fires_on_correlated_controls():
    rng = np.random.default_rng(7)
    names = LOCALISATION_STATISTICS

    def warn_rate(**kwargs):
        checks = null_checks(simulated_statistics(rng, 1000, 19, **kwargs), names)
        return np.mean([c.warning is not None for c in checks])

    assert abs(warn_rate() - 0.05) <= 0.02  # exchangeable: at its level
    # controls that share data with one another and not with the production model: fires,
    # more often than the omnibus's false-positive rate is inflated (0.14 and 0.25 here)
    assert warn_rate(shared=0.25) > 0.25
    assert warn_rate(shared=0.5) > 0.65
    # a drift of two classes of ten moves it much less: the check is about most classes
    assert warn_rate(shift={0: 3.0, 1: 3.0}) < 0.3


def test_the_null_check_ranks_the_production_model_like_a_control():
    rng = np.random.default_rng(1)
    checks = null_checks(simulated_statistics(rng, 3, 9), LOCALISATION_STATISTICS)
    for check in checks:
        assert check.controls.shape == (9,) and check.statistics == LOCALISATION_STATISTICS
        assert check.p_value == (1 + (check.controls >= check.production).sum()) / 10


def test_a_retest_without_the_models_combines_the_attack_parts_it_has():
    """Mitigation's re-test keeps no control models: the omnibus ranks the attack's parts."""
    rng = np.random.default_rng(2)
    full = simulated_statistics(rng, 4, 9)
    attack_only = {k: v for k, v in full.items() if k not in MODEL}
    combined = combined_scores(attack_only, recorded_combinations(DetectConfig()))
    parts = [part for part in OMNIBUS if part[0] in attack_only]
    assert set(combined) == {*parts, ("omnibus", "min_rank")}
    expected = stats.min_rank(np.stack([combined[p] for p in parts]), np.arange(1, 11))
    np.testing.assert_array_equal(combined["omnibus", "min_rank"], expected)
