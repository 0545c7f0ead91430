"""Planning a run: which rows each model of a seed trains on, before any model exists.

A seed's pool (the base data, then the holdout data when given) is split into base,
production (when split off the base), reference (the controls' pool) and holdout rows; the
scenario drifts the production data; each control draws its rows from the reference pool. All
seeds of a run share one image array (`StackedData`): the pool once, then each seed's drifted
production images, so every model selects its training set by index.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from drift_jax import data as data_lib
from drift_jax import streams
from drift_jax.data import Dataset
from drift_jax.data import scenarios as scenarios_lib
from drift_jax.detect.config import DetectConfig
from drift_jax.errors import DriftJaxError

KEY_NAMES = ("init", "train", "invert", "attack", "test")


@dataclasses.dataclass(frozen=True)
class Splits:
    """Index arrays into the pool: ``production`` is None unless split off the base data;
    ``reference`` is empty without controls."""

    base: np.ndarray
    production: np.ndarray | None
    reference: np.ndarray
    holdout: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        """The splits that exist, by name (what a run folder stores)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def with_holdout(config: DetectConfig, base: Dataset) -> tuple[Dataset, np.ndarray | None]:
    """The image pool (base data, then ``config.holdout`` data when given) and the held-out
    indices into it (None: hold out a stratified part of the base data)."""
    if not config.holdout:
        return base, None
    held = data_lib.load(config.holdout)
    if held.image_shape != base.image_shape or held.num_classes != base.num_classes:
        raise DriftJaxError(f"holdout data ({held.image_shape}, {held.num_classes} classes) does "
                            f"not match the base data ({base.image_shape}, {base.num_classes}).")
    pool = Dataset(np.concatenate([base.images, held.images]),
                   np.concatenate([base.labels, held.labels]), base.class_names,
                   f"{base.name}+{held.name}")
    return pool, len(base) + np.arange(len(held))


def split_pool(config: DetectConfig, labels: np.ndarray, num_classes: int,
               with_production: bool, holdout_ix: np.ndarray | None) -> Splits:
    """The seed's stratified splits of the base data (``labels``)."""
    parts = {"base": config.base_fraction}
    if with_production:
        parts["production"] = config.production_fraction
    if config.controls:
        parts["reference"] = config.reference_fraction
    if holdout_ix is None:
        rest = 1 - sum(parts.values())
        if rest <= 1e-9:
            raise DriftJaxError("base, production and reference fractions leave no held-out "
                                "data; make them sum to less than 1, or give a holdout spec.")
        parts["holdout"] = rest
    split = dict(zip(parts, data_lib.stratified_split(
        labels, list(parts.values()), streams.generator(config.seed, "split"), num_classes)))
    return Splits(split["base"], split.get("production"),
                  split.get("reference", np.zeros(0, np.int64)),
                  split.get("holdout", holdout_ix))


def drifted_production(config: DetectConfig, base: Dataset, production: Dataset | None,
                       production_ix) -> tuple[Dataset | None, np.ndarray | None, dict]:
    """The production data after the scenario, their labels before it (None without data) and
    the scenario's record."""
    if production is None and config.production:
        production = data_lib.load(config.production)
    if production is None and production_ix is not None:
        production = base.subset(production_ix, f"{base.name}[production]")
    if production is None:
        return None, None, {"name": "none (production model given)", "severity": 0}
    if production.image_shape != base.image_shape or production.num_classes != base.num_classes:
        raise DriftJaxError(f"production data ({production.image_shape}, "
                            f"{production.num_classes} classes) does not match the base data "
                            f"({base.image_shape}, {base.num_classes} classes).")
    images, labels = scenarios_lib.apply(config.scenario, production.images, production.labels,
                                         streams.key(config.seed, "scenario"), config.severity,
                                         class_names=production.class_names,
                                         **config.scenario_params)
    drifted = Dataset(images, labels, production.class_names, f"{production.name}"
                      f"+{config.scenario}@{config.severity}")
    return drifted, production.labels, {
        "name": config.scenario, "severity": config.severity, "params": config.scenario_params,
        "production_size": len(drifted)}


@dataclasses.dataclass
class SeedPlan:
    """One seed's data: splits into the pool, its (drifted) production data, control subsets."""

    config: DetectConfig
    split: Splits
    production: Dataset | None
    scenario: dict
    control_draws: list[np.ndarray]  # per control, positions into `control_rows`' candidates
    pooled: bool  # controls drawn from the reference pool and the production data
    keys: dict  # `KEY_NAMES` -> the seed's stream of that name (`streams.key`)

    @property
    def group_size(self) -> int:  # base, production, controls
        return 2 + self.config.controls

    def control_rows(self, production_rows: np.ndarray) -> list[np.ndarray]:
        """Each control's training rows: a subset of the reference pool, or with ``pooled``
        controls of the pool and the production data (``production_rows``, its rows in the
        stacked image array). Under no drift the production data are then as random a draw as
        the pool, so the production model's training set is distributed like a control's."""
        candidates = self.split.reference
        if self.pooled:
            candidates = np.concatenate([candidates, production_rows])
        return [candidates[draw] for draw in self.control_draws]


def plan_seed(config: DetectConfig, pool: Dataset, base_labels: np.ndarray,
              holdout_ix: np.ndarray | None, production: Dataset | None,
              split: Splits | None = None) -> SeedPlan:
    """``config.seed``'s plan over ``pool`` (`with_holdout`); ``production``: given production
    data, else loaded from ``config.production`` or split off the base data; ``split``: a run's
    stored splits, instead of computing them."""
    if split is None:
        split_production = production is None and not config.production and \
            not config.production_model
        split = split_pool(config, base_labels, pool.num_classes, split_production, holdout_ix)
    prod_data, null_labels, scenario = drifted_production(config, pool, production,
                                                          split.production)
    if null_labels is None:  # a production model: controls the base data's size
        null_labels = base_labels[split.base]
    reference = len(split.reference)
    if config.controls and reference < len(null_labels):
        raise DriftJaxError(
            f"the reference pool has {reference} images, fewer than the {len(null_labels)} each "
            "control model must train on (the production data's size); raise "
            "reference_fraction or lower production_fraction / base_fraction.")
    pooled = config.control_data == "pooled" and prod_data is not None  # else: the pool alone
    candidates = base_labels[split.reference]
    if pooled:
        candidates = np.concatenate([candidates, null_labels])
    draws = control_draws(config, candidates, null_labels, pool.num_classes)
    keys = {name: streams.key(config.seed, name) for name in KEY_NAMES}
    return SeedPlan(config, split, prod_data, scenario, draws, pooled, keys)


def control_draws(config: DetectConfig, candidates: np.ndarray, null_labels: np.ndarray,
                  num_classes: int) -> list[np.ndarray]:
    """Each control's positions into its candidates (labels ``candidates``): as many as the
    production data's, at random, or with ``stratify_controls`` per class as many as the
    production data's labels before the scenario (``null_labels``) hold."""
    rng = streams.generator(config.seed, "controls")
    size = len(null_labels)
    if not config.stratify_controls:
        return [rng.choice(len(candidates), size, replace=False) for _ in range(config.controls)]
    counts = np.bincount(null_labels, minlength=num_classes)
    strata = [np.flatnonzero(candidates == c) for c in range(num_classes)]
    short = [c for c in range(num_classes) if len(strata[c]) < counts[c]]
    if config.controls and short:
        c = short[0]
        raise DriftJaxError(
            f"stratified controls need {counts[c]} images of class {c} each, the control pool "
            f"has {len(strata[c])}; raise reference_fraction or set stratify_controls=false.")
    return [np.concatenate([rng.choice(stratum, n, replace=False)
                            for stratum, n in zip(strata, counts)])
            for _ in range(config.controls)]


def attack_rows(config: DetectConfig, split: Splits) -> tuple[np.ndarray, np.ndarray]:
    """The known members (from the base split) and non-members (the holdout) an attack on a
    seed's base model is fitted on: ``attack_fit_size`` of each, drawn by the seed."""
    rng = streams.generator(config.seed, "attack_rows")
    n_fit = min(config.attack_fit_size, len(split.base), len(split.holdout))
    return (rng.choice(split.base, n_fit, replace=False),
            rng.choice(split.holdout, n_fit, replace=False))


@dataclasses.dataclass(frozen=True)
class StackedData:
    """One image array for every seed: the pool, then each seed's (drifted) production images.
    ``production`` [S, n_p] are the rows of each seed's production data (empty without it)."""

    images: np.ndarray
    labels: np.ndarray
    production: np.ndarray

    @classmethod
    def build(cls, pool: Dataset, plans: list[SeedPlan]) -> StackedData:
        images, labels, rows, offset = [pool.images], [pool.labels], [], len(pool)
        for plan in plans:
            if plan.production is None:
                rows.append(np.zeros(0, np.int64))
                continue
            images.append(plan.production.images)
            labels.append(plan.production.labels)
            rows.append(offset + np.arange(len(plan.production)))
            offset += len(plan.production)
        return cls(np.concatenate(images), np.concatenate(labels), np.stack(rows))
