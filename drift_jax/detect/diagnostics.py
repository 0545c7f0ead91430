"""A per-run check of the calibrated test's one assumption: under no drift the production model
is one more control, exchangeable with them.

A drift moves the production model in the classes it touches; a control design that is not
exchangeable with the production model (controls that share training data with one another but
not with it) moves it in every class, the controls' spread being too narrow for it. So each
model among the production model and the controls is standardised per class and statistic by
the others (leave one out, `stats.standardised_deficits`), and its spread is the median over
classes of its mean |z| over statistics, its `TRIMMED` most extreme classes left out (a drift
of one or two classes then moves it little). The production model's spread is ranked among the
controls' (each computed alike, so the rank is an exact p-value under exchangeability); a small
p-value says the production model is far from the controls in most classes: a drift that
touches most classes, or controls it is not exchangeable with. On simulated models at M = 19
(`tests/test_decision.py`'s, 2,000 runs each) it warns in 5 % of exchangeable nulls, in 11 / 31
/ 77 % of nulls whose controls share a per-class component of correlation 0.1 / 0.25 / 0.5 (where
the omnibus's false-positive rate is 0.08 / 0.14 / 0.25), and in 20 % of runs with a 3-sd drift
of two classes of ten.
"""

from __future__ import annotations

import numpy as np

from drift_jax import stats as stats_lib
from drift_jax.detect.localise import on_test_scale
from drift_jax.detect.results import NullCheck

CHECK_LEVEL = 0.05  # at or below it a run warns
TRIMMED = 2  # each model's most extreme classes left out of its spread


def spreads(class_statistics: dict, names) -> np.ndarray:
    """[S, models, C] per statistic of ``names`` -> each model's spread [S, models - 1] (the
    production model, then the controls; the base model is left out). The mean score is taken
    on the logit scale, as localisation takes it."""
    z = []
    for name in names:
        v = on_test_scale(class_statistics, name)
        models = np.arange(1, v.shape[1])
        z.append(np.abs(stats_lib.standardised_deficits(v, models)[:, 1:]))  # [S, G - 1, C]
    per_class = np.sort(np.mean(z, 0), -1)  # mean over statistics, classes ascending
    kept = per_class[..., :max(per_class.shape[-1] - TRIMMED, 1)]
    return np.median(kept, -1)


def null_checks(class_statistics: dict, names, level: float = CHECK_LEVEL) -> list[NullCheck]:
    """One `NullCheck` per seed of ``class_statistics`` ({name: [S, models, C]}, models: base,
    production, controls; at least two controls)."""
    names = tuple(names)
    spread = spreads(class_statistics, names)
    production, controls = spread[:, 0], spread[:, 1:]
    p = stats_lib.calibrated_p_value(-controls.T, -production)  # upper tail
    out = []
    for s in range(len(spread)):
        warning = None
        if p[s] <= level:
            warning = (f"the production model sits far from the controls in most classes "
                       f"(median |z| {production[s]:.2f} against the controls' "
                       f"{np.median(controls[s]):.2f}, p = {p[s]:.3f} by {', '.join(names)}): "
                       "a drift that touches most classes, or controls that are not "
                       "exchangeable with it (then the p-value is too small); compare a "
                       "control_data='pooled' run")
        out.append(NullCheck(names, float(production[s]), controls[s], float(p[s]), warning))
    return out
