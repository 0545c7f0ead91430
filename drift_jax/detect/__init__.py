"""Drift detection by model inversion and membership inference (docs/METHOD.md).

One concern per module: `config` (what a run is), `plan` (which rows each model trains on),
`fit` (train and invert every model as one stack), `statistics` (per-model, per-class arrays),
`decision` (the calibrated test), `localise` (which classes moved, and where to), `baselines`,
`results` (typed results) and `pipeline` (`detect_drift`).
"""

from drift_jax.detect.config import (
    AFTER_TRAINING,
    ATTACKS,
    BASELINES,
    LOCALISATION_STATISTICS,
    MODEL_STATISTICS,
    OMNIBUS,
    DetectConfig,
    recorded_combinations,
    recorded_statistics,
    training_key,
)
from drift_jax.detect.decision import combined_scores, score_attack
from drift_jax.detect.diagnostics import null_checks
from drift_jax.detect.fit import invert_models, train_models
from drift_jax.detect.localise import (
    PARTNER_DIRECTIONS,
    class_p_values,
    class_tests,
    named_classes,
    partner_tests,
)
from drift_jax.detect.pipeline import cache_key, detect_drift, detect_drift_seeds
from drift_jax.detect.plan import (
    SeedPlan,
    Splits,
    StackedData,
    attack_rows,
    plan_seed,
    split_pool,
    with_holdout,
)
from drift_jax.detect.results import (
    Accuracy,
    AttackResult,
    BaselineResult,
    DriftReport,
    Localisation,
    NullCheck,
    Partner,
    PerClass,
)
from drift_jax.detect.statistics import (
    GrayScores,
    answers_on_base_gray,
    attack_statistics,
    model_statistics,
    reverse_statistic,
)

__all__ = [
    "AFTER_TRAINING", "ATTACKS", "BASELINES", "LOCALISATION_STATISTICS", "MODEL_STATISTICS",
    "OMNIBUS", "PARTNER_DIRECTIONS", "Accuracy", "AttackResult", "BaselineResult",
    "DetectConfig", "DriftReport", "GrayScores", "Localisation", "NullCheck", "Partner", "PerClass",
    "SeedPlan", "Splits", "StackedData", "answers_on_base_gray", "attack_rows",
    "attack_statistics", "cache_key", "class_p_values", "class_tests", "combined_scores",
    "detect_drift", "detect_drift_seeds", "invert_models", "model_statistics", "named_classes",
    "null_checks", "partner_tests", "plan_seed", "recorded_combinations", "recorded_statistics",
    "reverse_statistic", "score_attack", "split_pool", "train_models", "training_key",
    "with_holdout",
]
