"""The seven steps of METHOD.md end to end, with a calibrated decision: `detect_drift`.

Base, production and M control models (trained on random subsets of a reference pool from the
base distribution, of the production data's size) train as one stack and are inverted together;
every configured membership attack against the base model scores all gray data; the production
score is then ranked among the controls' scores:

    p = (1 + #{control score <= production score}) / (M + 1)

per attack; per class, the production model's class statistics against the controls' by a t
prediction interval (Holm or Benjamini-Hochberg corrected over classes x statistics), and for
each flagged class the class its concept went to (`partner_tests`); a permutation test of
per-image scores, base gray vs production gray; and the original rule (``seed_rule``:
production < 0.75 x base) for parity. Baselines (model disagreement, BBSD, MMD) run on the same
splits and controls.

Several seeds of one config run as one stack at every stage: S x (2 + M) models train and
invert as one program each, one inference call evaluates them all, the attacks target the S base
models at once (`membership.AttackContext`), and the tests and baselines are vectorised over
seeds. Only this module knows all seven steps; `report` writes what it returns.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
from typing import Literal

import jax
import numpy as np
from scipy import special

from drift_jax import baselines, inversion, membership, runtime, stack, validate
from drift_jax import data as data_lib
from drift_jax import stats as stats_lib
from drift_jax.config import TrainConfig, to_dict
from drift_jax.data import Dataset
from drift_jax.data import scenarios as scenarios_lib
from drift_jax.errors import DriftJaxError
from drift_jax.inversion import GrayData, InversionConfig, MIFaceConfig, invert
from drift_jax.models import ModelSpec
from drift_jax.report import DriftReport
from drift_jax.validate import bounded, check_fields

ATTACKS = tuple(membership.ATTACKS)
# Per-class statistics of the models themselves, beside each attack's statistics of the base
# model's scores (`_model_statistics`; the same for every attack).
MODEL_STATISTICS = ("self_confidence", "reverse")
# stat="omnibus": one statistic for a change spread over classes, two for a change that lives in
# one or two classes, the second on the logit scale (which does not compress classes near their
# ceiling: on MNIST it finds swaps and relabels the AUC misses), and the two model statistics,
# which see the partial relabels that leave the gray data's prototypes in place (issue 13's power
# curves, docs/RESULTS.md, sessions 10-12). A re-test without the models (mitigation) combines
# the parts it has.
OMNIBUS = (("mean", "class_mean"), ("auc", "two_largest_deficits"),
           ("logit_mean", "largest_deficit"), ("self_confidence", "class_mean"),
           ("reverse", "two_largest_deficits"))
# stat="omnibus" localises by the per-class statistics of its parts that are continuous in every
# model: the mean score (for the membership attack) and the models' own two. The AUC sits at its
# floor for every model and the logit mean repeats the mean (offline on the stored power runs,
# session 13: docs/RESULTS.md); the model statistics name the classes a partial relabel leaves
# the base model's scores blind to. Another ``stat`` localises by the mean score alone.
LOCALISATION_STATISTICS = ("mean", "self_confidence", "reverse")
# the two questions `partner_tests` asks about a flagged class: who reads whose gray data
PARTNER_DIRECTIONS = ("base_reads_production", "production_reads_base")
BASELINES = ("disagreement", "bbsd", "mmd")
SEED_RULE_RATIO = 0.75


@dataclasses.dataclass(frozen=True)
class DetectConfig:
    """`drift-jax detect`. Defaults run on the embedded digits in under a minute on 2 CPU
    cores. They were chosen from issue 13's power curves (docs/RESULTS.md): 49 controls (the
    smallest attainable p-value is 1 / (M + 1)), 16 gray images per class and model (8 left the
    severity-2 relabel at power 0.6) and the rule-based attack's target probability with the
    models' own statistics, combined by `OMNIBUS`. ``stat="fraction"``, ``controls=19`` is the
    original protocol's member fraction; for larger data use more samples per class and the
    regularised inversion."""

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
    # p >= 1 / (M + 1): 19 is the least that reaches 0.05, 49 leaves room below it (issue 13's
    # power curves, docs/RESULTS.md); 0: the seed rule only
    controls: int = bounded(49, ge=0)
    # What each control trains on: a random production-sized subset of the reference pool, or
    # ("pooled") of the reference pool and the production data together. Pooled controls make
    # the undrifted production model exactly exchangeable with them (`_SeedPlan.control_rows`),
    # at the cost of a share |production| / (|reference| + |production|) of the drift in each.
    control_data: Literal["reference", "pooled"] = "reference"
    # Each control takes the production data's class counts (before the scenario) instead of a
    # plain random subset's, as the split-off production data do (`_control_draws`).
    stratify_controls: bool = False
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(epochs=10))
    inversion: InversionConfig = dataclasses.field(default_factory=lambda: InversionConfig(
        samples_per_class=16, miface=MIFaceConfig(max_iter=300, init="uniform")))
    attacks: tuple[str, ...] = ("rule_based", "black_box")
    primary_attack: str = "rule_based"
    baselines: tuple[str, ...] = BASELINES
    alpha: float = bounded(0.05, gt=0, lt=1)
    correction: Literal["holm", "bh"] = "holm"
    # Per-class statistic of a model's gray scores: the original member fraction, or (on the
    # attack's continuous score) its mean, the mean's logit, AUC or KS against the base model's;
    # and how classes combine into one score (`stats.combine_classes`). "auto": the class mean
    # for `fraction` (the original protocol), the largest standardised deficit otherwise.
    # "omnibus": the smallest of the production model's ranks by `OMNIBUS`' statistics
    # (`stats.min_rank`).
    # `MODEL_STATISTICS`: "self_confidence", each model's confidence in its own gray data, and
    # "reverse", each model's answers on the base model's gray data (mean logits per class).
    stat: Literal["fraction", "mean", "logit_mean", "auc", "ks", "self_confidence", "reverse",
                  "omnibus"] = "omnibus"
    combine: Literal["auto", "class_mean", "largest_deficit", "two_largest_deficits"] = "auto"
    # members (and as many non-members) to fit attacks on
    attack_fit_size: int = bounded(2500, ge=10)
    num_shadows: int = bounded(8, ge=2, even=True)
    permutations: int = bounded(1000, ge=1)

    @property
    def combination(self) -> str:
        """`combine` with "auto" resolved."""
        if self.stat == "omnibus":
            return "min_rank"
        if self.combine != "auto":
            return self.combine
        return "class_mean" if self.stat == "fraction" else "largest_deficit"

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


def _with_holdout(config: DetectConfig, base: Dataset) -> tuple[Dataset, np.ndarray | None]:
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


def _splits(config: DetectConfig, labels: np.ndarray, num_classes: int, with_production: bool,
            holdout_ix: np.ndarray | None) -> dict[str, np.ndarray | None]:
    """Index arrays base, production (None unless split off), reference (empty without
    controls) and holdout into the pool; ``labels`` are the base data's."""
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
    split = dict(zip(parts, data_lib.stratified_split(labels, list(parts.values()), config.seed,
                                                      num_classes)))
    split.setdefault("production", None)
    split.setdefault("reference", np.zeros(0, np.int64))
    split.setdefault("holdout", holdout_ix)
    return split


def _production_data(config: DetectConfig, base: Dataset, production: Dataset | None,
                     prod_ix) -> tuple[Dataset | None, np.ndarray | None, dict]:
    """The production data after the scenario, their labels before it (None without data) and
    the scenario's record."""
    if production is None and config.production:
        production = data_lib.load(config.production)
    if production is None and prod_ix is not None:
        production = base.subset(prod_ix, f"{base.name}[production]")
    if production is None:
        return None, None, {"name": "none (production model given)", "severity": 0}
    if production.image_shape != base.image_shape or production.num_classes != base.num_classes:
        raise DriftJaxError(f"production data ({production.image_shape}, "
                            f"{production.num_classes} classes) does not match the base data "
                            f"({base.image_shape}, {base.num_classes} classes).")
    key = jax.random.fold_in(jax.random.key(config.seed), 7)
    images, labels = scenarios_lib.apply(config.scenario, production.images, production.labels,
                                         key, config.severity, **config.scenario_params)
    drifted = Dataset(images, labels, production.class_names, f"{production.name}"
                      f"+{config.scenario}@{config.severity}")
    return drifted, production.labels, {
        "name": config.scenario, "severity": config.severity, "params": config.scenario_params,
        "production_size": len(drifted)}


@dataclasses.dataclass
class _SeedPlan:
    """One seed's data: splits into the pool, its (drifted) production data, control subsets."""

    config: DetectConfig
    split: dict
    production: Dataset | None
    scenario: dict
    control_draws: list[np.ndarray]  # per control, positions into `control_rows`' candidates
    pooled: bool  # controls drawn from the reference pool and the production data
    keys: dict  # init, train, invert, attack, test

    @property
    def group_size(self) -> int:  # base, production, controls
        return 2 + self.config.controls

    def control_rows(self, production_rows: np.ndarray) -> list[np.ndarray]:
        """Each control's training rows: a subset of the reference pool, or with ``pooled``
        controls of the pool and the production data (``production_rows``, its rows in the
        stacked image array). Under no drift the production data are as random a draw as the
        pool, so the production model's training set is then distributed like a control's, and
        its overlap with every control like theirs with each other: the M + 1 models are
        exchangeable and every rank p-value is exact (docs/RESULTS.md, session 12)."""
        candidates = self.split["reference"]
        if self.pooled:
            candidates = np.concatenate([candidates, production_rows])
        return [candidates[draw] for draw in self.control_draws]


def _plan(config: DetectConfig, pool: Dataset, base_labels: np.ndarray,
          holdout_ix: np.ndarray | None, production: Dataset | None) -> _SeedPlan:
    split_production = production is None and not config.production and \
        not config.production_model
    split = _splits(config, base_labels, pool.num_classes, split_production, holdout_ix)
    prod_data, null_labels, scenario = _production_data(config, pool, production,
                                                        split["production"])
    if null_labels is None:  # a production model: controls the base data's size
        null_labels = base_labels[split["base"]]
    reference = len(split["reference"])
    if config.controls and reference < len(null_labels):
        raise DriftJaxError(
            f"the reference pool has {reference} images, fewer than the {len(null_labels)} each "
            "control model must train on (the production data's size); raise "
            "reference_fraction or lower production_fraction / base_fraction.")
    pooled = config.control_data == "pooled" and prod_data is not None  # else: the pool alone
    candidates = base_labels[split["reference"]]
    if pooled:
        candidates = np.concatenate([candidates, null_labels])
    draws = _control_draws(config, candidates, null_labels, pool.num_classes)
    keys = dict(zip(("init", "train", "invert", "attack", "test"),
                    jax.random.split(jax.random.key(config.seed), 5)))
    return _SeedPlan(config, split, prod_data, scenario, draws, pooled, keys)


def _control_draws(config: DetectConfig, candidates: np.ndarray, null_labels: np.ndarray,
                   num_classes: int) -> list[np.ndarray]:
    """Each control's positions into its candidates (labels ``candidates``): as many as the
    production data's, at random, or with ``stratify_controls`` per class as many as the
    production data's labels before the scenario (``null_labels``) hold."""
    rng = np.random.default_rng(config.seed + 1)
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


@dataclasses.dataclass(frozen=True)
class _StackedData:
    """One image array for every seed: the pool, then each seed's (drifted) production images.
    ``production`` [S, n_p] are the rows of each seed's production data (empty without it)."""

    images: np.ndarray
    labels: np.ndarray
    production: np.ndarray

    @classmethod
    def build(cls, pool: Dataset, plans: list[_SeedPlan]) -> _StackedData:
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


def _train_all(spec: ModelSpec, config: DetectConfig, data: _StackedData,
               plans: list[_SeedPlan], production_model: dict | None, progress: bool) -> dict:
    """Steps 1-2 and the controls for every seed: one stack on one device-resident image array.
    Members per seed: base, production, controls; each member's keys depend on its seed and role
    only, so stacking seeds changes nothing."""
    indices, init_keys, train_keys = [], [], []
    with_production = production_model is None
    for plan, production_rows in zip(plans, data.production):
        roles = [plan.split["base"], *([production_rows] if with_production else []),
                 *plan.control_rows(production_rows)]
        # A given production model takes role 1: trained members skip it, keys keep their role.
        role_ids = np.array([0, *range(2 - with_production, plan.group_size)])
        indices += roles
        init_keys.append(stack.per_member_keys(plan.keys["init"], plan.group_size)[role_ids])
        train_keys.append(stack.per_member_keys(plan.keys["train"], plan.group_size)[role_ids])
    variables = stack.init_stack(spec, jax.numpy.concatenate(init_keys))
    trained = stack.train_stack(spec, variables, data.images, data.labels, indices, config.train,
                                jax.numpy.concatenate(train_keys), progress=progress).variables
    if with_production:
        return trained
    # Append the given model once, then gather it into role 1 of every seed's group.
    n, step = stack.stack_size(trained), plans[0].group_size - 1
    combined = jax.tree.map(lambda t, p: np.concatenate([t, p[:1]]), trained, production_model)
    order = np.concatenate([[g * step, n, *range(g * step + 1, (g + 1) * step)]
                            for g in range(len(plans))])
    return stack.member(combined, order)


TRAINING_KEYS = ("base", "production", "production_model", "holdout", "scenario", "severity",
                 "scenario_params", "arch", "base_fraction", "production_fraction",
                 "reference_fraction", "controls", "control_data", "stratify_controls",
                 "train")


class TrainedCache:
    """The trained stacks of the last few calls, keyed by everything training depends on: a
    sweep over inversion, attack or test settings trains once per seed group, not per point."""

    def __init__(self, size: int = 4):
        self.size, self._items = size, collections.OrderedDict()

    @staticmethod
    def key(config: DetectConfig, seeds: list[int]) -> str:
        resolved = to_dict(config)
        fields = {k: resolved[k] for k in TRAINING_KEYS}
        return json.dumps({**fields, "seeds": seeds}, sort_keys=True)

    def get(self, key: str):
        if key in self._items:
            self._items.move_to_end(key)
        return self._items.get(key)

    def put(self, key: str, trained) -> None:
        self._items[key] = trained
        while len(self._items) > self.size:
            self._items.popitem(last=False)


def detect_drift(config: DetectConfig, base: Dataset | None = None,
                 production: Dataset | None = None, progress: bool = True) -> DriftReport:
    """Runs the seven steps; see the module docstring. Returns a `DriftReport`."""
    return detect_drift_seeds(config, [config.seed], base, production, progress)[0]


def detect_drift_seeds(config: DetectConfig, seeds, base: Dataset | None = None,
                       production: Dataset | None = None, progress: bool = True,
                       cache: TrainedCache | None = None) -> list[DriftReport]:
    """`detect_drift` for several seeds of one config as one stack (module docstring). Each
    seed's keys, splits and data depend on that seed only, so its report is the one a
    single-seed run gives (to float rounding where learned attacks train batched). With a
    ``cache``, a stack trained by an earlier call of the same training settings is reused
    (``timings["train_reused"]`` says so)."""
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise DriftJaxError(f"seeds must be distinct and non-empty, got {seeds}.")
    clock = runtime.StageClock()
    with clock("data"):
        base = base if base is not None else data_lib.load(config.base)
        pool, holdout_ix = _with_holdout(config, base)
        spec = ModelSpec(config.arch, base.num_classes, base.image_shape)
        _check_memory(config, len(seeds), spec, len(pool))
        plans = [_plan(dataclasses.replace(config, seed=s), pool, base.labels, holdout_ix,
                       production) for s in seeds]
        production_model = None
        if config.production_model:  # checked before any training
            production_model = stack.load_stack(config.production_model, expect=spec)[1]
        data = _StackedData.build(pool, plans)
    with clock("train"):
        cache_key = TrainedCache.key(config, seeds) if cache is not None else None
        trained = cache.get(cache_key) if cache is not None else None
        train_reused = int(trained is not None)
        if trained is None:
            trained = _train_all(spec, config, data, plans, production_model, progress)
            if cache is not None:
                cache.put(cache_key, trained)
    with clock("invert"):  # steps 3-4: gray data of every model of every seed, one program
        inv_keys = jax.numpy.concatenate([stack.per_member_keys(p.keys["invert"], p.group_size)
                                          for p in plans])
        gray = invert(spec, trained, range(base.num_classes), config.inversion, inv_keys,
                      progress=progress)
    outcome = _decide(spec, plans, data, trained, gray, list(pool.class_names), clock, progress)
    timings = {**clock.seconds, "total": sum(clock.seconds.values()),
               "seeds_sharing_train_and_invert": len(seeds), "train_reused": train_reused,
               "compiles": clock.compiles}
    group = plans[0].group_size
    return [DriftReport(**fields, timings=timings, config=to_dict(plan.config),
                        class_names=list(pool.class_names), scenario=plan.scenario,
                        environment=runtime.environment(),
                        gray=gray.select(np.arange(g * group, (g + 1) * group)),
                        models=(spec, stack.member(trained, [g * group, g * group + 1])))
            for g, (plan, fields) in enumerate(zip(plans, outcome))]


def _check_memory(config: DetectConfig, num_seeds: int, spec: ModelSpec,
                  pool_size: int) -> None:
    """The run's largest allocations, estimated before any work: the inversion of every model,
    the stack's training, and the per-attack permutation tests (base vs production gray data)."""
    models = num_seeds * (2 + config.controls)
    inversion.check_memory(spec, models, spec.num_classes, config.inversion)
    stack.check_training_memory(spec, models, config.train.batch_size, 1, "vmap", pool_size)
    samples = 2 * config.inversion.samples_per_class * spec.num_classes
    validate.check_memory(4.0 * num_seeds * config.permutations * samples, f"permutation tests of "
                          f"{config.permutations} permutations", "lower permutations")


def attack_rows(config: DetectConfig, split: dict) -> tuple[np.ndarray, np.ndarray]:
    """The known members (from the base split) and non-members (the holdout) an attack on a
    seed's base model is fitted on: ``attack_fit_size`` of each, drawn by the seed."""
    rng = np.random.default_rng(config.seed)
    n_fit = min(config.attack_fit_size, len(split["base"]), len(split["holdout"]))
    return (rng.choice(split["base"], n_fit, replace=False),
            rng.choice(split["holdout"], n_fit, replace=False))


def _attack_context(spec: ModelSpec, plans: list[_SeedPlan], data: _StackedData, images,
                    targets: dict, progress: bool, clock) -> membership.AttackContext:
    """The S base models as attack targets: each seed's known members (from its base split)
    and non-members (its holdout), and, when an attack needs them, one shadow stack of S x K
    models on each seed's reference + holdout pool."""
    config = plans[0].config
    members, nonmembers = zip(*(attack_rows(plan.config, plan.split) for plan in plans))
    keys = jax.numpy.stack([p.keys["attack"] for p in plans])
    shadows = None
    if any(membership.ATTACKS[name].needs_shadows for name in config.attacks):
        with clock("shadows"):
            pools = np.stack([np.concatenate([p.split["reference"], p.split["holdout"]])
                              for p in plans])
            shadow_keys = jax.vmap(lambda k: jax.random.fold_in(k, len(ATTACKS)))(keys)
            shadows = membership.train_shadows(spec, data.images, data.labels, pools,
                                               config.num_shadows, config.train, shadow_keys,
                                               progress)
    return membership.AttackContext(spec, targets, images, data.labels, np.stack(members),
                                    np.stack(nonmembers), keys, shadows)


def _combined_scores(class_statistics: dict) -> dict:
    """Every statistic's per-class values [S, models, C] (model 0 the base model, 1 the
    production model, then the controls) -> one score per model [S, models] for every
    (statistic, combination) of the statistics x `stats.COMBINATIONS`, and for ("omnibus",
    "min_rank"): the `OMNIBUS` scores combined by their ranks (`stats.min_rank`). The production
    model and the controls are standardised and ranked alike, so each rank p-value stays exact."""
    models = np.arange(1, next(iter(class_statistics.values())).shape[1])
    combined = {(stat, combine): stats_lib.combine_classes(class_statistics[stat], models,
                                                           combine)
                for stat, combine in itertools.product(class_statistics, stats_lib.COMBINATIONS)}
    combined["omnibus", "min_rank"] = stats_lib.min_rank(
        np.stack([combined[part] for part in OMNIBUS if part in combined]), models)
    return combined


def class_p_values(class_statistics: dict, names: list[str], controls: np.ndarray,
                   correction: str = "holm") -> tuple[np.ndarray, np.ndarray]:
    """Localisation's per-class tests: one-sided p-values [S, statistics, C] that the production
    model's (model 1) class statistic is low among the controls' (`stats.prediction_p_value`),
    for each of ``names`` of ``class_statistics`` [S, models, C], and per class the smallest of
    its statistics' p-values corrected over classes x statistics [S, C] (a class is flagged when
    one of its statistics is). The mean score on the logit scale: a class mean near its ceiling
    of 1 has a long lower tail across models, which the t interval would read as drift (offline
    on digits: the rate of undrifted models with a class flagged drops from 0.21 to 0.07); the
    model statistics are mean logits already."""
    by_statistic = []
    for name in names:
        v = class_statistics[name]
        if name == "mean":
            v = stats_lib.clipped_logit(v, clip=1e-4)
        by_statistic.append(stats_lib.prediction_p_value(v[:, controls].transpose(1, 0, 2),
                                                         v[:, 1]))
    by_statistic = np.stack(by_statistic, 1)
    return by_statistic, _corrected_classes(by_statistic, correction)


def _corrected_classes(by_statistic: np.ndarray, correction: str) -> np.ndarray:
    """[S, statistics, C] p-values -> [S, C]: per class its smallest corrected p-value."""
    correct = stats_lib.CORRECTIONS[correction]
    return np.stack([correct(p.ravel()).reshape(p.shape).min(0) for p in by_statistic])


def _score_attack(values: np.ndarray, probability: np.ndarray, decisions: np.ndarray,
                  config: DetectConfig, test_keys: jax.Array, attack_index: int,
                  model_statistics: dict | None = None) -> list[dict]:
    """Statistics of one attack's continuous per-image scores, member probabilities and member
    decisions [S, models, C, samples] (models: base, production, controls...) for every seed
    (``test_keys`` [S]); without controls the p-values are None and only the seed rule and the
    permutation test decide. ``config.stat`` and ``config.combination`` choose the decision's
    statistic; ``statistics`` holds the calibrated p-value of every statistic x combination,
    computed from the same scores (so one run gives every row of a power curve), and of the
    ``model_statistics`` [S, models, C] beside them, if given (`_model_statistics`)."""
    num_seeds, num_models, c = values.shape[:3]
    controls = np.arange(2, num_models)
    calibrated = len(controls) > 0
    # every statistic's per-class values [S, models, C], reported so that any combination can be
    # evaluated offline
    class_statistics = {**{stat: stats_lib.per_class_statistic(values, probability, stat)
                           for stat in stats_lib.STATISTICS}, **(model_statistics or {})}
    per_class = class_statistics[OMNIBUS[0][0] if config.stat == "omnibus" else config.stat]
    if calibrated:
        combined = _combined_scores(class_statistics)
        overall = combined[config.stat, config.combination]
    else:  # nothing to standardise against: classes are averaged
        overall = per_class.mean(-1)
    # the per-image scores the permutation tests compare
    scores = probability if config.stat == "fraction" else values
    keys = jax.vmap(lambda k: jax.random.fold_in(k, attack_index))(test_keys)
    perm = stats_lib.permutation_tests(scores[:, 0].reshape(num_seeds, -1),
                                       scores[:, 1].reshape(num_seeds, -1), keys,
                                       config.permutations)
    if calibrated:
        # Localisation: a rank among M controls cannot survive a correction over C classes
        # unless M >= C / alpha, so each class statistic is compared with the controls' by a t
        # prediction interval (each model counted once), then corrected over classes x
        # statistics; a class is flagged when one of its statistics is.
        rank_p = stats_lib.calibrated_p_value(per_class[:, controls].transpose(1, 0, 2),
                                              per_class[:, 1])
        # any other stat localises by the mean score: a member fraction of a few images is
        # discrete and often at its ceiling for every control
        localise_by = ([s for s in LOCALISATION_STATISTICS if s in class_statistics]
                       if config.stat == "omnibus" else ["mean"])
        if len(controls) > 1:
            by_statistic, class_corrected = class_p_values(class_statistics, localise_by,
                                                           controls, config.correction)
        else:  # one control has no spread: the rank of the decision's per-class statistic
            localise_by, by_statistic = ["rank"], rank_p[:, None]  # [S, statistics, C]
            class_corrected = _corrected_classes(by_statistic, config.correction)
        # per class, Bonferroni over its statistics
        class_p = np.minimum(by_statistic.min(1) * by_statistic.shape[1], 1.0)
        every = {f"{stat}/{combine}": stats_lib.calibrated_p_value(o[:, controls].T, o[:, 1])
                 for (stat, combine), o in combined.items()}
        p_value = every[f"{config.stat}/{config.combination}"]
    out = []
    for s in range(num_seeds):
        base_frac, prod_frac = decisions[s, 0].mean(), decisions[s, 1].mean()
        out.append({
            "base_score": float(overall[s, 0]), "production_score": float(overall[s, 1]),
            "control_scores": overall[s, controls].tolist(),
            "p_value": float(p_value[s]) if calibrated else None,
            "statistic": f"{config.stat}/{config.combination}",
            "statistics": ({k: float(v[s]) for k, v in every.items()} if calibrated else None),
            # [models, C] per statistic: base, production, then the controls
            "class_statistics": ({k: np.round(v[s], 6).tolist()
                                  for k, v in class_statistics.items()} if calibrated else None),
            "base_member_fraction": float(base_frac),
            "production_member_fraction": float(prod_frac),
            "per_class": {
                "base": per_class[s, 0].tolist(), "production": per_class[s, 1].tolist(),
                "control_mean": per_class[s, controls].mean(0).tolist() if calibrated else None,
                "p_value_rank": rank_p[s].tolist() if calibrated else None,
                "p_value": class_p[s].tolist() if calibrated else None,
                "p_value_corrected": class_corrected[s].tolist() if calibrated else None,
                "p_value_by_statistic": ({name: p.tolist() for name, p in zip(
                    localise_by, by_statistic[s])} if calibrated else None)},
            "permutation_test": {"statistic": float(perm["statistic"][s]),
                                 "p_value": float(perm["p_value"][s])},
            "seed_rule": {"ratio": SEED_RULE_RATIO,
                          "is_drift": bool(prod_frac < SEED_RULE_RATIO * base_frac)}})
    return out


def answers_on_base_gray(spec: ModelSpec, trained: dict, base_gray: np.ndarray,
                         group: int) -> np.ndarray:
    """Every model's class probabilities [S, group, C, samples, classes] on its seed's base
    model's gray images ``base_gray`` [S, C, samples, H, W, ch] (the stack's seeds in groups of
    ``group``: the base model, the production model, then the controls), in one batched
    inference call."""
    num_seeds, c, samples = base_gray.shape[:3]
    flat = base_gray.reshape(num_seeds * c * samples, *base_gray.shape[3:])
    index = np.repeat(np.arange(len(flat)).reshape(num_seeds, -1), group, axis=0)
    logits = stack.predict(spec, trained, flat, index)
    return special.softmax(logits, axis=-1).reshape(num_seeds, group, c, samples, -1)


def reverse_statistic(on_base_gray: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The ``reverse`` model statistic [S, models, C] (`_model_statistics`): the mean clipped
    logit of each model's probability of the target ``classes`` [C] on the base model's gray
    data (``on_base_gray`` [S, models, C, samples, classes], `answers_on_base_gray`)."""
    target = np.take_along_axis(on_base_gray, np.reshape(classes, (1, 1, -1, 1, 1)), -1)[..., 0]
    return stats_lib.clipped_logit(target).mean(-1)


def _model_statistics(gray: GrayData, on_base_gray: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class statistics [S, models, C] that ask each model of a seed (base, production,
    controls) instead of the base model, as mean clipped logits (`stats.clipped_logit`):

    * ``self_confidence``: the model's own probability of the target on its gray data (the
      confidence its inversion reached). A class that shares its images with another in the
      model's training labels (a partial relabel or swap) cannot be made as certain.
    * ``reverse``: the model's probability of the target on the *base* model's gray data of that
      class (`reverse_statistic`): the rule-based membership question with the roles swapped
      (is the base model's picture of the class still one for this model?). A partial relabel
      a -> b leaves the production model's own prototypes of a and b intact, but lowers its
      answer on the base model's.
    Under no drift the production model and the controls stay exchangeable in both, so the rank
    tests stay exact."""
    num_seeds, group, c = on_base_gray.shape[:3]
    confidence = gray.confidence.reshape(num_seeds, group, c, -1)
    return {"self_confidence": stats_lib.clipped_logit(confidence).mean(-1),
            "reverse": reverse_statistic(on_base_gray, gray.classes)}


def _decide(spec: ModelSpec, plans: list[_SeedPlan], data: _StackedData, trained: dict,
            gray: GrayData, class_names: list[str], clock: runtime.StageClock,
            progress: bool) -> list[dict]:
    """Steps 5-7 and the baselines for every seed at once; one dict of `DriftReport` fields per
    seed."""
    config = plans[0].config
    num_seeds, group = len(plans), plans[0].group_size
    images = jax.device_put(data.images)  # resident for every inference call below
    holdout = np.stack([p.split["holdout"] for p in plans])  # [S, n]
    base_members = np.arange(num_seeds) * group
    with clock("evaluate"):  # every model on its seed's holdout: one inference call
        logits = stack.predict(spec, trained, images, np.repeat(holdout, group, axis=0))
        truth = np.repeat(data.labels[holdout], group, axis=0)
        accuracy = np.asarray(stack.accuracy_from_logits(logits, truth, spec.num_classes)[
            "accuracy"]).reshape(num_seeds, group)

    # Steps 5-6: membership inference against the base model of every seed.
    targets = stack.member(trained, base_members)
    with clock("model_statistics"):
        on_base_gray = answers_on_base_gray(spec, trained, gray.images[::group], group)
        model_statistics = _model_statistics(gray, on_base_gray)
    context = _attack_context(spec, plans, data, images, targets, progress, clock)
    c, samples = gray.images.shape[1:3]
    gray_images = gray.images.reshape(num_seeds, group * c * samples, *gray.images.shape[3:])
    gray_labels = gray.labels.reshape(num_seeds, -1)
    attacks = [{} for _ in plans]
    for i, name in enumerate(config.attacks):
        with clock(f"attack_{name}"):
            keys = jax.vmap(lambda k, i=i: jax.random.fold_in(k, i))(context.keys)
            attack = membership.ATTACKS[name]().fit(dataclasses.replace(context, keys=keys))
            scores = attack.score(gray_images, gray_labels)
            shape = (num_seeds, group, c, samples)
            values = scores.scores.get(attack.oriented_score, scores.probability)
            continuous = {k: v.reshape(shape).mean(3) for k, v in scores.scores.items()}
            test_keys = jax.numpy.stack([p.keys["test"] for p in plans])
            for s, result in enumerate(_score_attack(
                    values.reshape(shape), scores.probability.reshape(shape),
                    scores.decision.reshape(shape), config, test_keys, i, model_statistics)):
                result["continuous"] = {k: {  # per-class means of each continuous score
                    "base": v[s, 0].tolist(), "production": v[s, 1].tolist(),
                    "control_mean": v[s, 2:].mean(0).tolist() if group > 2 else None}
                    for k, v in continuous.items()}
                attacks[s][name] = result

    with clock("baselines"):
        found = _baselines(config, plans, data, images, holdout, logits, targets, spec)
    out, flagged = [], []
    for s in range(num_seeds):
        # Step 7. With controls, the calibrated test decides, and classes are named only when
        # the global test rejects (gatekeeping: the per-class tests rest on a normal model of
        # the controls' spread, the global rank test on nothing). Without controls (the
        # original protocol) only the seed rule is available.
        primary = attacks[s][config.primary_attack]
        if config.controls:
            is_drift = bool(primary["p_value"] <= config.alpha)
            corrected = np.asarray(primary["per_class"]["p_value_corrected"])
            flagged.append(np.flatnonzero(corrected <= config.alpha) if is_drift
                           else np.zeros(0, int))
        else:
            is_drift = primary["seed_rule"]["is_drift"]
            flagged.append(np.zeros(0, int))
        drifted = [class_names[k] for k in flagged[s]]
        out.append({"is_drift": is_drift, "p_value": primary["p_value"],
                    "drifted_classes": drifted, "attacks": attacks[s], "baselines": found[s],
                    "localisation": {"flagged": drifted, "partners": {}},
                    "accuracy": {"base": float(accuracy[s, 0]),
                                 "production": float(accuracy[s, 1]),
                                 "controls": accuracy[s, 2:].tolist()}})
    with clock("localise"):  # the base model's answers on every model's gray data
        answers = stack.predict(
            spec, targets, gray_images.reshape(-1, *gray_images.shape[2:]),
            np.arange(gray_images.shape[0] * gray_images.shape[1]).reshape(num_seeds, -1))
        answers = special.softmax(answers.reshape(num_seeds, group, c, samples, -1), axis=-1)
    for o, read_by_base, read_base in zip(out, answers.mean(3), on_base_gray.mean(3)):
        o["localisation"]["confusion"] = np.round(read_by_base, 6).tolist()
        o["localisation"]["confusion_on_base_gray"] = np.round(read_base, 6).tolist()
    if any(len(f) for f in flagged):
        with clock("localise"):
            found_partners = partner_tests(
                dict(zip(PARTNER_DIRECTIONS, (answers.argmax(-1), on_base_gray.argmax(-1)))),
                flagged, config)
        for o, partners in zip(out, found_partners):
            named = destination_named(partners)
            o["localisation"]["partners"] = {class_names[k]: {
                "destination": None if f["destination"] is None else class_names[f["destination"]],
                "direction": f["direction"], "named": named[k],
                "p_values": {d: {class_names[j]: p for j, p in row.items()}
                             for d, row in f["p_values"].items()}}
                for k, f in partners.items()}
            o["drifted_classes"] = [class_names[k] for k in named_classes(partners)]
    return out


def named_classes(partners: dict[int, dict]) -> list[int]:
    """The flagged classes, then the destinations of those that are not themselves another
    flagged class's destination: a relabel a -> b flagged at both a and b names b's destination
    a, but not the class that a's now meaningless gray data happens to look like."""
    named = destination_named(partners)
    return list(dict.fromkeys([*partners, *(f["destination"] for k, f in partners.items()
                                            if named[k])]))


def destination_named(partners: dict[int, dict]) -> dict[int, bool]:
    """Per flagged class: is its destination named (`named_classes`)?"""
    explained = {f["destination"] for f in partners.values()} & set(partners)
    return {k: f["destination"] is not None and k not in explained for k, f in partners.items()}


def partner_tests(answers: dict[str, np.ndarray], flagged: list[np.ndarray],
                  config: DetectConfig) -> list[dict[int, dict]]:
    """Where a flagged class's concept went, asked in both directions (`PARTNER_DIRECTIONS`):

    * ``base_reads_production``: does the base model read the production model's gray data of
      class k as another class j more often than the controls'? A relabel a -> b or a partial
      swap often moves the membership scores of b only (its prototype now mixes both concepts);
      its gray images, though, are answered a by the base model.
    * ``production_reads_base``: does the production model read the base model's gray data of
      class k as j more often than the controls do? A partial relabel a -> b keeps the
      production model's own prototype of a (inversion is mode-seeking), but its labels now
      send a's images to b: flagged at a, this names b.

    Per flagged class k, direction and j != k, a one-sided exact test (`stats.fisher_tests`)
    compares the share of the production model's answers j with the controls' (pooled),
    Holm-corrected over the 2 (C - 1) tests. Answers, not probabilities: a shift of tiny
    probabilities of every other class is not a destination. The destination is the class with
    the largest excess share among those whose corrected p-value is at most ``config.alpha`` (a
    swapped-in "1" may also read as "7" now and then; only the "1" is where the concept went).
    Like the per-class test it runs only once the global test has rejected (gatekeeping).

    answers: per direction [S, models, C, samples], the answered class for each gray image
    (model 1 the production model, 2.. the controls); flagged: per seed the flagged class
    indices. Returns per seed {k: {"destination": j or None, "direction": the
    destination's, "p_values": {direction: {j: corrected p-value}}}}.
    """
    directions = list(answers)
    num_classes = answers[directions[0]].shape[2]
    pairs = [(s, k) for s, ks in enumerate(flagged) for k in ks]
    seeds, classes = (np.array(v, int) for v in zip(*pairs))
    others = np.array([[j for j in range(num_classes) if j != k] for k in classes])  # [P, C-1]
    # [D, P, 1, M * samples] and [D, P, 1, samples]: answered j?
    controls = np.stack([answers[d][seeds, 2:, classes].reshape(len(pairs), 1, -1)
                         for d in directions])
    production = np.stack([answers[d][seeds, 1, classes][:, None, :] for d in directions])
    tests = stats_lib.fisher_tests(
        (controls == others[:, :, None]).reshape(-1, controls.shape[-1]),
        (production == others[:, :, None]).reshape(-1, production.shape[-1]))
    # [P, D * (C - 1)]: every test of a flagged class in one row
    p, excess = (tests[k].reshape(len(directions), *others.shape).transpose(1, 0, 2)
                 .reshape(len(pairs), -1) for k in ("p_value", "statistic"))
    out = [{} for _ in flagged]
    for (s, k), row, p_row, excess_row in zip(pairs, others, p, excess):
        corrected = stats_lib.CORRECTIONS[config.correction](p_row)
        found = corrected <= config.alpha
        best = int(np.where(found, excess_row, -np.inf).argmax())
        out[s][int(k)] = {
            "destination": int(row[best % len(row)]) if found.any() else None,
            "direction": directions[best // len(row)] if found.any() else None,
            "p_values": {d: {int(j): float(q) for j, q in zip(row, q_row)}
                         for d, q_row in zip(directions, corrected.reshape(len(directions), -1))}}
    return out


def _baselines(config: DetectConfig, plans: list[_SeedPlan], data: _StackedData, images,
               holdout: np.ndarray, logits: np.ndarray, targets: dict,
               spec: ModelSpec) -> list[dict]:
    """Model disagreement (from the evaluation's predictions), BBSD and MMD, every seed at once.
    ``logits`` [S * (2 + M), n, C] are every model's on its seed's holdout."""
    num_seeds = len(plans)
    found = [{} for _ in plans]
    group = plans[0].group_size
    if "disagreement" in config.baselines and config.controls:
        preds = logits.argmax(-1).reshape(num_seeds, group, -1)
        for s, result in enumerate(baselines.disagreement(preds, 1, np.arange(2, group))):
            found[s]["disagreement"] = result
    if data.production.shape[1]:
        if "bbsd" in config.baselines:
            base_soft = special.softmax(logits.reshape(num_seeds, group, *logits.shape[1:])[:, 0],
                                        axis=-1)
            prod_soft = special.softmax(stack.predict(spec, targets, images, data.production),
                                        axis=-1)
            for s, result in enumerate(baselines.bbsd(base_soft, prod_soft)):
                found[s]["bbsd"] = result
        if "mmd" in config.baselines:
            keys = jax.numpy.stack([jax.random.fold_in(p.keys["test"], 99) for p in plans])
            results = baselines.mmd_tests(data.images[holdout], data.images[data.production],
                                          keys, config.permutations)
            for s, result in enumerate(results):
                found[s]["mmd"] = result
    for per_seed in found:
        for result in per_seed.values():
            result["is_drift"] = bool(result["p_value"] <= config.alpha)
    return found
