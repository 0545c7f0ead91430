"""What a run decided and measured, as typed values (`report` turns them into report.json and
back). Arrays are per seed: [C] per class, [models] in the run's order (base, production, the
controls), so ``controls`` rows start at index 2 of every [models, ...] array."""

from __future__ import annotations

import dataclasses

import numpy as np

from drift_jax.inversion import GrayData


@dataclasses.dataclass(frozen=True)
class PerClass:
    """An attack's per-class view: the decision's statistic per class [C] for the base and
    production models and the controls' mean; with controls, the per-class tests
    (`localise.ClassTests` for one seed)."""

    base: np.ndarray
    production: np.ndarray
    control_mean: np.ndarray | None = None
    p_value_rank: np.ndarray | None = None
    p_value: np.ndarray | None = None
    p_value_corrected: np.ndarray | None = None
    p_value_by_statistic: dict[str, np.ndarray] | None = None


@dataclasses.dataclass(frozen=True)
class TestResult:
    statistic: float
    p_value: float


@dataclasses.dataclass(frozen=True)
class SeedRule:
    """The original protocol's rule: drift when production < ``ratio`` x base (member fraction)."""

    ratio: float
    is_drift: bool


@dataclasses.dataclass(frozen=True)
class ClassMeans:
    """Per-class means [C] of one continuous attack score."""

    base: np.ndarray
    production: np.ndarray
    control_mean: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class NullCheck:
    """`diagnostics.null_checks` for one seed: the production model's spread (median |z| over
    classes x ``statistics``) among the controls' [M]; ``p_value`` its exact upper-tail rank
    p-value; ``warning`` set when it is at most `diagnostics.CHECK_LEVEL`."""

    statistics: tuple[str, ...]
    production: float
    controls: np.ndarray
    p_value: float
    warning: str | None


@dataclasses.dataclass(frozen=True)
class AttackResult:
    """One attack's verdict for one seed. ``statistic`` names the deciding ``stat/combination``;
    ``control_scores`` [M] its scores of the controls; ``statistics`` the calibrated p-value of
    every recorded (statistic, combination); ``class_statistics`` {name: [models, C]} only when
    the run records everything (``record="all"``); ``null_check`` whether the production model
    looks exchangeable with the controls (`diagnostics`)."""

    statistic: str
    base_score: float
    production_score: float
    control_scores: np.ndarray
    p_value: float | None
    statistics: dict[str, float] | None
    class_statistics: dict[str, np.ndarray] | None
    base_member_fraction: float
    production_member_fraction: float
    per_class: PerClass
    permutation_test: TestResult
    seed_rule: SeedRule
    continuous: dict[str, ClassMeans] = dataclasses.field(default_factory=dict)
    null_check: NullCheck | None = None  # with at least two controls


@dataclasses.dataclass(frozen=True)
class BaselineResult:
    """A baseline test's p-value and verdict, with its own measurements in ``details``."""

    p_value: float
    is_drift: bool
    details: dict


@dataclasses.dataclass(frozen=True)
class Partner:
    """Where a flagged class's concept went (`localise.partner_tests`), in class names."""

    destination: str | None
    direction: str | None
    named: bool
    p_values: dict[str, dict[str, float]]


@dataclasses.dataclass(frozen=True)
class Localisation:
    """The flagged classes and their partners; ``confusion`` [models, C, C]: the base model's
    mean class probabilities on every model's gray data of each class (row k: the gray images
    of class k); ``confusion_on_base_gray`` [models, C, C]: every model's on the base model's."""

    flagged: list[str]
    partners: dict[str, Partner]
    confusion: np.ndarray | None = None
    confusion_on_base_gray: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Accuracy:
    base: float
    production: float
    controls: np.ndarray


@dataclasses.dataclass
class DriftReport:
    """Everything a run decided and measured.

    ``timings`` holds wall seconds per stage (shared by the seeds that ran as one stack),
    ``total``, and ``compiles``: per stage, XLA executables built, seconds spent on them and
    how many came from the persistent compilation cache. ``splits``: the index arrays of the
    run's data (`plan.Splits.arrays`, with ``controls`` [M, n] each control's rows)."""

    is_drift: bool
    p_value: float | None
    drifted_classes: list[str]
    attacks: dict[str, AttackResult]
    baselines: dict[str, BaselineResult]
    accuracy: Accuracy
    timings: dict
    config: dict
    class_names: list[str]
    scenario: dict
    environment: dict
    localisation: Localisation
    gray: GrayData | None = None
    # (ModelSpec, variables [2]): the base and production models, which `mitigate` starts from
    models: tuple | None = None
    splits: dict[str, np.ndarray] | None = None
