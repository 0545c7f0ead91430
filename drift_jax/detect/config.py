"""`DetectConfig` and the named sets of statistics the decision and localisation use.

Which statistic is which (docs/METHOD.md, "Statistics"): the attack statistics of
`stats.STATISTICS` are membership inference (an attack against the base model scores every
model's gray data); the `MODEL_STATISTICS` ask each model about gray data instead: model
agreement on inverted probes, no attack involved.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from drift_jax import membership
from drift_jax import stats as stats_lib
from drift_jax.config import TrainConfig, to_dict
from drift_jax.errors import DriftJaxError
from drift_jax.inversion import InversionConfig, MIFaceConfig
from drift_jax.validate import bounded, check_fields

ATTACKS = tuple(membership.ATTACKS)
# Per-class statistics of the models themselves (`statistics.model_statistics`), beside each
# attack's statistics of the base model's scores; the same for every attack.
MODEL_STATISTICS = ("self_confidence", "reverse")
# stat="omnibus": (statistic, combination) parts ranked together by `stats.min_rank`. One part
# for a change spread over classes, two for a change that lives in one or two classes (the
# second on the logit scale, which does not compress classes near their ceiling), and the two
# model statistics, which see partial relabels that leave the gray data's prototypes in place
# (docs/RESULTS.md, "Which statistics carry the power").
OMNIBUS = (("mean", "class_mean"), ("auc", "two_largest_deficits"),
           ("logit_mean", "largest_deficit"), ("self_confidence", "class_mean"),
           ("reverse", "two_largest_deficits"))
# stat="omnibus" localises by the omnibus parts that are continuous in every model: the mean
# score of the attack and the two model statistics (the AUC sits at its floor for most models and
# the logit mean repeats the mean). Any other ``stat`` localises by the mean score alone.
LOCALISATION_STATISTICS = ("mean", "self_confidence", "reverse")
BASELINES = ("disagreement", "bbsd", "mmd")
SEED_RULE_RATIO = 0.75  # the original protocol: drift when production < 0.75 x base
# Fields read only after the models are trained: a sweep may reuse a trained stack across points
# that differ only in these (`sweep.TrainedCache`). Any field not listed here keys the cache, so
# a new field is safe by default.
AFTER_TRAINING = frozenset({"seed", "inversion", "attacks", "primary_attack", "baselines",
                            "alpha", "correction", "stat", "combine", "attack_fit_size",
                            "num_shadows", "permutations", "record"})


@dataclasses.dataclass(frozen=True)
class DetectConfig:
    """`drift-jax detect`. The defaults run on the embedded digits: 49 controls (the smallest
    attainable p-value is 1 / (M + 1)), 16 gray images per class and model, and the rule-based
    attack's target probability with the models' own statistics, combined by `OMNIBUS`.
    ``stat="fraction"``, ``controls=19`` is the original protocol's member fraction; for larger
    data use more samples per class and the regularised inversion."""

    base: str = "digits"
    production: str | None = None  # a spec; None: split production data off the base data
    production_model: str | None = None  # a checkpoint: then no production data is needed
    holdout: str | None = None  # a spec (e.g. a test split); None: hold out part of the base
    scenario: str = "label_swap"  # applied to the production data; 'none' is the control
    severity: int = bounded(5, ge=0, le=5)
    scenario_params: dict = dataclasses.field(default_factory=dict)
    arch: str = "seedcnn"
    seed: int = bounded(0, ge=0)
    base_fraction: float = bounded(0.25, gt=0, lt=1)
    production_fraction: float = bounded(0.2, gt=0, lt=1)
    reference_fraction: float = bounded(0.4, gt=0, lt=1)  # controls' pool; the rest held out
    # p >= 1 / (M + 1): 19 is the least that reaches 0.05; 0: the seed rule only
    controls: int = bounded(49, ge=0)
    # What each control trains on: a random production-sized subset of the reference pool, or
    # ("pooled") of the reference pool and the production data together (`plan.SeedPlan`).
    control_data: Literal["reference", "pooled"] = "reference"
    # Each control takes the production data's class counts (before the scenario).
    stratify_controls: bool = False
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(epochs=10))
    inversion: InversionConfig = dataclasses.field(default_factory=lambda: InversionConfig(
        samples_per_class=16, miface=MIFaceConfig(max_iter=300, init="uniform")))
    attacks: tuple[str, ...] = ("rule_based", "black_box")
    primary_attack: str = "rule_based"
    baselines: tuple[str, ...] = BASELINES
    alpha: float = bounded(0.05, gt=0, lt=1)
    correction: Literal["holm", "bh"] = "holm"
    # The decision's statistic: one of `stats.STATISTICS` of the attack's scores, one of
    # `MODEL_STATISTICS`, or "omnibus" (the smallest of the production model's ranks by the
    # `OMNIBUS` parts, `stats.min_rank`).
    stat: Literal["fraction", "mean", "logit_mean", "auc", "ks", "self_confidence", "reverse",
                  "omnibus"] = "omnibus"
    # How classes combine into one score for a single ``stat`` (`stats.combine_classes`);
    # "auto": the class mean for `fraction`, the largest standardised deficit otherwise. The
    # omnibus fixes each part's combination, so it takes "auto" only.
    combine: Literal["auto", "class_mean", "largest_deficit", "two_largest_deficits"] = "auto"
    # members (and as many non-members) to fit attacks on
    attack_fit_size: int = bounded(2500, ge=10)
    num_shadows: int = bounded(8, ge=2, even=True)
    permutations: int = bounded(1000, ge=1)
    # "decision": compute and keep the statistics the decision and localisation use; "all":
    # every statistic x combination and every model's per-class statistics (power studies)
    record: Literal["decision", "all"] = "decision"

    @property
    def combination(self) -> str:
        """`combine` with "auto" resolved."""
        if self.stat == "omnibus":
            return "min_rank"
        if self.combine != "auto":
            return self.combine
        return "class_mean" if self.stat == "fraction" else "largest_deficit"

    @property
    def decision_name(self) -> str:
        """The deciding statistic as report.json names it: ``stat/combination``."""
        return f"{self.stat}/{self.combination}"

    def __post_init__(self):
        check_fields(self)
        unknown = set(self.attacks) - set(ATTACKS)
        if unknown or self.primary_attack not in self.attacks:
            raise DriftJaxError(f"attacks must come from {', '.join(ATTACKS)} and include the "
                                f"primary attack; got {self.attacks}, primary "
                                f"{self.primary_attack!r}.")
        if set(self.baselines) - set(BASELINES):
            raise DriftJaxError(f"baselines must come from {', '.join(BASELINES)}.")
        if self.production and self.production_model:
            raise DriftJaxError("give production data or a production model, not both.")
        if self.stat == "omnibus" and self.combine != "auto":
            raise DriftJaxError(f"combine={self.combine!r} has no effect with stat='omnibus' "
                                "(each omnibus part has its own combination); leave combine "
                                "'auto', or choose a single stat such as 'mean'.")


def recorded_statistics(config: DetectConfig) -> tuple[str, ...]:
    """The per-class statistics a run computes: every one with ``record="all"``, else those its
    decision and localisation read."""
    if config.record == "all":
        return (*stats_lib.STATISTICS, *MODEL_STATISTICS)
    if config.stat == "omnibus":
        needed = [s for s, _ in OMNIBUS] + list(LOCALISATION_STATISTICS)
    else:
        needed = [config.stat, "mean"]
    return tuple(dict.fromkeys(needed))


def recorded_combinations(config: DetectConfig) -> tuple[tuple[str, str], ...]:
    """The (statistic, combination) scores a run ranks: every one with ``record="all"``, else the
    decision's (the omnibus: its parts and itself)."""
    if config.record == "all":
        return tuple((s, c) for s in recorded_statistics(config)
                     for c in stats_lib.COMBINATIONS) + (("omnibus", "min_rank"),)
    if config.stat == "omnibus":
        return (*OMNIBUS, ("omnibus", "min_rank"))
    return ((config.stat, config.combination),)


def training_key(config: DetectConfig) -> dict:
    """Every field that training depends on (all but `AFTER_TRAINING`), as plain data."""
    return {k: v for k, v in to_dict(config).items() if k not in AFTER_TRAINING}
