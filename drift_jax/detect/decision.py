"""Step 7: the calibrated test (Besag & Clifford 1989's Monte-Carlo rank p-value).

Per attack, the per-class statistics of every model combine into one score per model
(`stats.combine_classes`, or the omnibus of `OMNIBUS`' parts, `stats.min_rank`); the production
model's score is ranked among the controls':

    p = (1 + #{control score <= production score}) / (M + 1)

exact when the production model and the controls are exchangeable under no drift. Beside it,
the per-class tests of localisation, a permutation test of per-image scores (base gray vs
production gray) and the original protocol's seed rule.
"""

from __future__ import annotations

import math
import warnings

import jax
import numpy as np

from drift_jax import stats as stats_lib
from drift_jax import streams
from drift_jax.detect.config import (
    LOCALISATION_STATISTICS,
    OMNIBUS,
    SEED_RULE_RATIO,
    DetectConfig,
    recorded_combinations,
)
from drift_jax.detect.diagnostics import null_checks
from drift_jax.detect.localise import class_tests
from drift_jax.detect.results import AttackResult, ClassMeans, PerClass, SeedRule, TestResult
from drift_jax.detect.statistics import GrayScores
from drift_jax.errors import DriftJaxWarning


def warn_if_never_rejecting(config: DetectConfig) -> None:
    """The calibrated p-value is at least 1/(M + 1) with M control models: with fewer than
    1/alpha - 1 of them the run cannot report drift whatever the data, which its user should
    hear before anything is trained (a `DriftJaxWarning`; the run goes on)."""
    smallest = 1 / (config.controls + 1)
    if config.controls and smallest > config.alpha:
        need = math.ceil(1 / config.alpha - 1 - 1e-9)  # 1/0.05 - 1 is 19 up to rounding
        warnings.warn(DriftJaxWarning(
            f"with {config.controls} control model(s) the smallest p-value is {smallest:.3g}, "
            f"above alpha {config.alpha}, so this run can never report drift; use controls >= "
            f"{need} (or alpha >= {smallest:.3g})."), stacklevel=2)


def combined_scores(class_statistics: dict, combinations) -> dict:
    """Per-class values [S, models, C] -> one score per model [S, models] for each
    (statistic, combination) of ``combinations`` whose statistic ``class_statistics`` holds;
    ("omnibus", "min_rank") ranks the `OMNIBUS` parts it holds together (`stats.min_rank`: a
    re-test without the control models has the attack's parts only). The production model and
    the controls are standardised and ranked alike, so each rank p-value stays exact."""
    models = np.arange(1, next(iter(class_statistics.values())).shape[1])
    wanted = list(combinations)
    if ("omnibus", "min_rank") in wanted:
        wanted += list(OMNIBUS)
    combined = {}
    for stat, combine in dict.fromkeys(wanted):
        if stat in class_statistics:
            combined[stat, combine] = stats_lib.combine_classes(class_statistics[stat], models,
                                                                combine)
    if ("omnibus", "min_rank") in combinations:
        combined["omnibus", "min_rank"] = stats_lib.min_rank(
            np.stack([combined[part] for part in OMNIBUS if part in combined]), models)
    return {k: combined[k] for k in combinations if k in combined}


def score_attack(scores: GrayScores, class_statistics: dict, config: DetectConfig,
                 test_keys: jax.Array, attack: str) -> list[AttackResult]:
    """``attack``'s verdict for every seed (``test_keys`` [S]): ``scores`` of every model's gray
    data [S, models, C, samples] (models: base, production, controls), ``class_statistics``
    {name: [S, models, C]} holding at least the decision's and localisation's statistics
    (`config.recorded_statistics`). Without controls the p-values are None and only the seed
    rule and the permutation test decide."""
    num_seeds, num_models = scores.values.shape[:2]
    controls = np.arange(2, num_models)
    calibrated = len(controls) > 0
    decision_stat = OMNIBUS[0][0] if config.stat == "omnibus" else config.stat
    per_class = class_statistics[decision_stat]
    if calibrated:
        combinations = recorded_combinations(config)
        combined = combined_scores(class_statistics, combinations)
        overall = combined[config.stat, config.combination]
        recorded = {f"{stat}/{combine}": stats_lib.calibrated_p_value(o[:, controls].T, o[:, 1])
                    for (stat, combine), o in combined.items()}
        p_value = recorded[config.decision_name]
        localise_by = ([s for s in LOCALISATION_STATISTICS if s in class_statistics]
                       if config.stat == "omnibus" else ["mean"])
        tests = class_tests(class_statistics, decision_stat, localise_by, config.correction)
        checks = (null_checks(class_statistics, localise_by) if len(controls) > 1
                  else [None] * num_seeds)
    else:  # nothing to standardise against: classes are averaged
        overall = per_class.mean(-1)
    # the per-image scores the permutation tests compare
    image_scores = scores.probability if config.stat == "fraction" else scores.values
    perm = stats_lib.permutation_tests(image_scores[:, 0].reshape(num_seeds, -1),
                                       image_scores[:, 1].reshape(num_seeds, -1),
                                       streams.fold(test_keys, attack), config.permutations)
    keep_all = calibrated and config.record == "all"
    out = []
    for s in range(num_seeds):
        base_frac, prod_frac = scores.decision[s, 0].mean(), scores.decision[s, 1].mean()
        view = PerClass(per_class[s, 0], per_class[s, 1])
        if calibrated:
            view = PerClass(per_class[s, 0], per_class[s, 1], per_class[s, controls].mean(0),
                            tests.rank[s], tests.bonferroni[s], tests.corrected[s],
                            dict(zip(tests.statistics, tests.by_statistic[s])))
        out.append(AttackResult(
            statistic=config.decision_name, base_score=float(overall[s, 0]),
            production_score=float(overall[s, 1]), control_scores=overall[s, controls],
            p_value=float(p_value[s]) if calibrated else None,
            statistics={k: float(v[s]) for k, v in recorded.items()} if calibrated else None,
            class_statistics=({k: v[s] for k, v in class_statistics.items()} if keep_all
                              else None),
            base_member_fraction=float(base_frac), production_member_fraction=float(prod_frac),
            per_class=view,
            permutation_test=TestResult(float(perm["statistic"][s]), float(perm["p_value"][s])),
            seed_rule=SeedRule(SEED_RULE_RATIO, bool(prod_frac < SEED_RULE_RATIO * base_frac)),
            continuous={k: class_means(v.mean(-1)[s]) for k, v in scores.continuous.items()},
            null_check=checks[s] if calibrated else None))
    return out


def class_means(per_model: np.ndarray) -> ClassMeans:
    """[models, C] per-class means -> the base's, the production's and the controls' mean."""
    return ClassMeans(per_model[0], per_model[1],
                      per_model[2:].mean(0) if len(per_model) > 2 else None)
