"""The seven steps of METHOD.md end to end, with a calibrated decision: `detect_drift`.

Base, production and M control models (trained on random subsets of a reference pool from the
base distribution, of the production data's size) train as one stack and are inverted together;
every configured membership attack against the base model scores all gray data; the production
score is then ranked among the controls' scores:

    p = (1 + #{control score <= production score}) / (M + 1)

per attack; per class, the production model's per-image scores against the controls' by
permutation (Holm or Benjamini-Hochberg corrected over classes); a permutation test of per-image
scores, base gray vs production gray; and the original rule (``seed_rule``: production < 0.75 x
base) for parity. Baselines (model disagreement, BBSD, MMD) run on the same
splits and controls. Only this module knows all seven steps.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from pathlib import Path
from typing import Literal

import jax
import numpy as np

from drift_jax import baselines, membership, runtime, stack
from drift_jax import data as data_lib
from drift_jax import stats as stats_lib
from drift_jax.config import TrainConfig, to_dict
from drift_jax.data import Dataset
from drift_jax.data import scenarios as scenarios_lib
from drift_jax.errors import DriftJaxError
from drift_jax.inversion import GrayData, InversionConfig, MIFaceConfig, invert
from drift_jax.membership.base import stack_logits
from drift_jax.models import ModelSpec

ATTACKS = ("rule_based", "black_box", "shadow", "lira")
BASELINES = ("disagreement", "bbsd", "mmd")
SEED_RULE_RATIO = 0.75


@dataclasses.dataclass(frozen=True)
class DetectConfig:
    """`drift-jax detect`. Defaults run on the embedded digits in well under 2 minutes on 2 CPU
    cores; for a study use more controls (``controls=19`` or more: the smallest attainable
    p-value is 1 / (M + 1)), more samples per class and the regularised inversion."""

    base: str = "digits"
    production: str | None = None  # a spec; None: split production data off the base data
    production_model: str | None = None  # a checkpoint: then no production data is needed
    holdout: str | None = None  # a spec (e.g. a test split); None: hold out part of the base
    scenario: str = "label_swap"  # applied to the production data; 'none' is the control
    severity: int = 5
    scenario_params: dict = dataclasses.field(default_factory=dict)
    arch: str = "seedcnn"
    seed: int = 0
    base_fraction: float = 0.25
    production_fraction: float = 0.2
    reference_fraction: float = 0.4  # controls' pool; the rest is held out
    controls: int = 19  # p >= 1 / (M + 1): 19 is the least that reaches 0.05; 0: seed rule only
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(epochs=10))
    inversion: InversionConfig = dataclasses.field(default_factory=lambda: InversionConfig(
        samples_per_class=8, miface=MIFaceConfig(max_iter=300, init="uniform")))
    attacks: tuple[str, ...] = ("rule_based", "black_box")
    primary_attack: str = "rule_based"
    baselines: tuple[str, ...] = BASELINES
    alpha: float = 0.05
    correction: Literal["holm", "bh"] = "holm"
    attack_fit_size: int = 2500  # members (and as many non-members) to fit attacks on
    num_shadows: int = 8
    permutations: int = 1000

    def __post_init__(self):
        unknown = set(self.attacks) - set(ATTACKS)
        if unknown or self.primary_attack not in self.attacks:
            raise DriftJaxError(f"attacks must come from {', '.join(ATTACKS)} and include the "
                                f"primary attack; got {self.attacks}, primary "
                                f"{self.primary_attack!r}.")
        if set(self.baselines) - set(BASELINES):
            raise DriftJaxError(f"baselines must come from {', '.join(BASELINES)}.")
        if self.controls < 0:
            raise DriftJaxError("controls must be >= 0 (0: no calibrated test, the original "
                                "protocol's seed rule decides).")
        if self.production and self.production_model:
            raise DriftJaxError("give production data or a production model, not both.")
        if not 0 < self.alpha < 1:
            raise DriftJaxError(f"alpha must lie in (0, 1), got {self.alpha}.")


@dataclasses.dataclass
class DriftReport:
    """Everything a run decided and measured; `to_json()` is what report.json holds."""

    is_drift: bool
    p_value: float
    drifted_classes: list[str]
    attacks: dict
    baselines: dict
    accuracy: dict
    timings: dict
    config: dict
    class_names: list[str]
    scenario: dict
    environment: dict
    gray: GrayData | None = None

    def to_json(self) -> dict:
        out = dataclasses.asdict(dataclasses.replace(self, gray=None))
        out.pop("gray")
        return out


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
                     prod_ix) -> tuple[Dataset | None, dict]:
    if production is None and config.production:
        production = data_lib.load(config.production)
    if production is None and prod_ix is not None:
        production = base.subset(prod_ix, f"{base.name}[production]")
    if production is None:
        return None, {"name": "none (production model given)", "severity": 0}
    if production.image_shape != base.image_shape or production.num_classes != base.num_classes:
        raise DriftJaxError(f"production data ({production.image_shape}, "
                            f"{production.num_classes} classes) does not match the base data "
                            f"({base.image_shape}, {base.num_classes} classes).")
    key = jax.random.fold_in(jax.random.key(config.seed), 7)
    images, labels = scenarios_lib.apply(config.scenario, production.images, production.labels,
                                         key, config.severity, **config.scenario_params)
    drifted = Dataset(images, labels, production.class_names, f"{production.name}"
                      f"+{config.scenario}@{config.severity}")
    return drifted, {"name": config.scenario, "severity": config.severity,
                     "params": config.scenario_params, "production_size": len(drifted)}


def _build_attack(name: str, config: DetectConfig, spec: ModelSpec, base_vars: dict,
                  base: Dataset, base_ix, reference_ix, holdout_ix, key, shared: dict):
    """A fitted attack; the shadow and LiRA attacks share one shadow stack via ``shared``."""
    rng = np.random.default_rng(config.seed)
    n_fit = min(config.attack_fit_size, len(base_ix), len(holdout_ix))
    members = rng.choice(base_ix, n_fit, replace=False)
    nonmembers = rng.choice(holdout_ix, n_fit, replace=False)
    if name == "rule_based":
        return membership.RuleBased(spec, base_vars)
    if name == "black_box":
        return membership.BlackBox(spec, base_vars).fit(
            base.images[members], base.labels[members], base.images[nonmembers],
            base.labels[nonmembers], key)
    pool = np.concatenate([reference_ix, holdout_ix])
    if name == "shadow":
        attack = membership.ShadowModels(spec, base_vars, config.num_shadows, config.train)
    else:
        attack = membership.LiRA(spec, base_vars, config.num_shadows, config.train)
    attack.fit(base.images[pool], base.labels[pool], key, shadows=shared.get("shadows"),
               keep=shared.get("keep"))
    shared.update(shadows=attack.shadows, keep=attack.keep)
    return attack


def _score_attack(attack, gray: GrayData, config: DetectConfig, production: int,
                  controls: np.ndarray, key) -> dict:
    """Scores of one attack on a seed's gray data [base, production, controls...]; without
    controls the p-values are None and only the seed rule and the permutation test decide."""
    m, c, s = gray.images.shape[:3]
    flat = gray.images.reshape(m * c * s, *gray.images.shape[3:])
    scores = attack.score(flat, gray.labels.reshape(-1))
    prob = scores.probability.reshape(m, c, s)
    flagged = scores.decision.reshape(m, c, s).astype(float)
    per_class = prob.mean(2)  # [models, classes]
    overall = per_class.mean(1)
    perm = stats_lib.permutation_test(prob[0].ravel(), prob[production].ravel(), key,
                                      config.permutations)
    base_frac, prod_frac = flagged[0].mean(), flagged[production].mean()
    calibrated = {"p_value": None, "p_value_rank": None, "p_value_corrected": None,
                  "class_p": None}
    if len(controls):
        # Localisation: a rank among M controls cannot survive a correction over C classes
        # unless M >= C / alpha, so each class compares the production model's per-image scores
        # with the pooled per-image scores of the controls by permutation, then corrects.
        class_perm = stats_lib.permutation_tests(
            prob[controls].transpose(1, 0, 2).reshape(c, -1), prob[production],
            stack.per_member_keys(key, c), config.permutations)["p_value"]
        calibrated = {
            "p_value": float(stats_lib.calibrated_p_value(overall[controls],
                                                          overall[production])),
            "p_value_rank": stats_lib.calibrated_p_value(per_class[controls],
                                                         per_class[production]).tolist(),
            "class_p": class_perm.tolist(),
            "p_value_corrected": stats_lib.CORRECTIONS[config.correction](class_perm).tolist()}
    return {
        "base_score": float(overall[0]), "production_score": float(overall[production]),
        "control_scores": overall[controls].tolist(), "p_value": calibrated["p_value"],
        "base_member_fraction": float(base_frac), "production_member_fraction": float(prod_frac),
        "per_class": {"base": per_class[0].tolist(), "production": per_class[production].tolist(),
                      "control_mean": (per_class[controls].mean(0).tolist() if len(controls)
                                       else None),
                      "p_value_rank": calibrated["p_value_rank"],
                      "p_value": calibrated["class_p"],
                      "p_value_corrected": calibrated["p_value_corrected"]},
        "permutation_test": perm,
        "seed_rule": {"ratio": SEED_RULE_RATIO,
                      "is_drift": bool(prod_frac < SEED_RULE_RATIO * base_frac)},
    }


@dataclasses.dataclass
class _SeedPlan:
    """One seed's data: splits into the pool, its (drifted) production data, control subsets."""

    config: DetectConfig
    split: dict
    production: Dataset | None
    scenario: dict
    control_ix: list[np.ndarray]
    keys: dict  # init, train, invert, attack, test

    @property
    def group_size(self) -> int:  # base, production, controls
        return 2 + self.config.controls


def _plan(config: DetectConfig, pool: Dataset, base_labels: np.ndarray,
          holdout_ix: np.ndarray | None, production: Dataset | None) -> _SeedPlan:
    split_production = production is None and not config.production and \
        not config.production_model
    split = _splits(config, base_labels, pool.num_classes, split_production, holdout_ix)
    prod_data, scenario = _production_data(config, pool, production, split["production"])
    size = len(prod_data) if prod_data is not None else len(split["base"])
    reference = split["reference"]
    if config.controls and len(reference) < size:
        raise DriftJaxError(
            f"the reference pool has {len(reference)} images, fewer than the {size} each control "
            "model must train on (the production data's size); raise reference_fraction or "
            "lower production_fraction / base_fraction.")
    rng = np.random.default_rng(config.seed + 1)
    control_ix = [rng.choice(reference, size, replace=False) for _ in range(config.controls)]
    keys = dict(zip(("init", "train", "invert", "attack", "test"),
                    jax.random.split(jax.random.key(config.seed), 5)))
    return _SeedPlan(config, split, prod_data, scenario, control_ix, keys)


def _train_all(spec: ModelSpec, config: DetectConfig, pool: Dataset, plans: list[_SeedPlan],
               production_model: dict | None, progress: bool) -> dict:
    """Steps 1-2 and the controls for every seed: one stack on one device-resident image array
    (each seed's production images appended). Members per seed: base, production, controls;
    each member's keys depend on its seed and role only, so stacking seeds changes nothing."""
    images, labels, offset = [pool.images], [pool.labels], len(pool)
    indices, init_keys, train_keys = [], [], []
    with_production = plans[0].production is not None
    for plan in plans:
        roles = [plan.split["base"]]
        if with_production:
            images.append(plan.production.images)
            labels.append(plan.production.labels)
            roles.append(offset + np.arange(len(plan.production)))
            offset += len(plan.production)
        roles += plan.control_ix
        # A given production model takes role 1: trained members skip it, keys keep their role.
        role_ids = np.array([0, *range(2 - with_production, plan.group_size)])
        indices += roles
        init_keys.append(stack.per_member_keys(plan.keys["init"], plan.group_size)[role_ids])
        train_keys.append(stack.per_member_keys(plan.keys["train"], plan.group_size)[role_ids])
    variables = stack.init_stack(spec, jax.numpy.concatenate(init_keys))
    trained = stack.train_stack(spec, variables, np.concatenate(images), np.concatenate(labels),
                                indices, config.train, jax.numpy.concatenate(train_keys),
                                progress=progress).variables
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
                 "reference_fraction", "controls", "train")


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
    """`detect_drift` for several seeds of one config as one stack: S seeds x (2 + M) models
    train as one program and invert as one program; attacks and tests then run per seed.
    Each report equals the one a single-seed run gives (keys depend on seed and role only).
    With a ``cache``, a stack trained by an earlier call of the same training settings is
    reused (``timings["train_reused"]`` says so)."""
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise DriftJaxError(f"seeds must be distinct and non-empty, got {seeds}.")
    clock = time.perf_counter()
    base = base if base is not None else data_lib.load(config.base)
    pool, holdout_ix = _with_holdout(config, base)
    plans = [_plan(dataclasses.replace(config, seed=s), pool, base.labels, holdout_ix,
                   production) for s in seeds]
    spec = ModelSpec(config.arch, base.num_classes, base.image_shape)
    production_model = None
    if config.production_model:  # checked before any training
        production_model = stack.load_stack(config.production_model, expect=spec)[1]
    shared = {"data": time.perf_counter() - clock}
    clock = time.perf_counter()
    cache_key = TrainedCache.key(config, seeds) if cache is not None else None
    trained = cache.get(cache_key) if cache is not None else None
    shared["train_reused"] = int(trained is not None)
    if trained is None:
        trained = _train_all(spec, config, pool, plans, production_model, progress)
        if cache is not None:
            cache.put(cache_key, trained)
    shared["train"] = time.perf_counter() - clock
    clock = time.perf_counter()
    # Steps 3-4: gray data of every model of every seed, one program.
    inv_keys = jax.numpy.concatenate([stack.per_member_keys(p.keys["invert"], p.group_size)
                                      for p in plans])
    gray = invert(spec, trained, range(base.num_classes), config.inversion, inv_keys,
                  progress=progress)
    shared["invert"] = time.perf_counter() - clock
    reports = []
    for g, plan in enumerate(plans):
        members = np.arange(g * plan.group_size, (g + 1) * plan.group_size)
        group = stack.member(trained, members)
        report = _decide(spec, plan, pool, group, gray.select(members))
        report.timings = {**shared, **report.timings, "seeds_sharing_train_and_invert":
                          len(seeds)}
        report.timings["total"] = sum(v for k, v in report.timings.items() if k not in (
            "total", "seeds_sharing_train_and_invert", "train_reused"))
        reports.append(report)
    return reports


def _decide(spec: ModelSpec, plan: _SeedPlan, pool: Dataset, trained: dict,
            gray: GrayData) -> DriftReport:
    """Steps 5-7 and the baselines for one seed's trained group and its gray data."""
    config, split, timings = plan.config, plan.split, {}
    clock = time.perf_counter()
    holdout_ix = split["holdout"]
    production_index, controls = 1, np.arange(2, plan.group_size)
    evaluation = stack.evaluate_stack(spec, trained, pool.images[holdout_ix],
                                      pool.labels[holdout_ix])
    accuracy = {"base": evaluation["accuracy"][0], "production": evaluation["accuracy"][1],
                "controls": evaluation["accuracy"][2:]}

    # Steps 5-6: membership inference against the base model.
    base_vars = stack.member(trained, slice(0, 1))
    attacks, shared = {}, {}
    for i, name in enumerate(config.attacks):
        attack = _build_attack(name, config, spec, base_vars, pool, split["base"],
                               split["reference"], holdout_ix,
                               jax.random.fold_in(plan.keys["attack"], i), shared)
        attacks[name] = _score_attack(attack, gray, config, production_index, controls,
                                      jax.random.fold_in(plan.keys["test"], i))
        timings[f"attack_{name}"] = time.perf_counter() - clock
        clock = time.perf_counter()

    # Step 7. With controls, the calibrated test decides, and classes are named only when the
    # global test rejects (gatekeeping): per-image permutation p-values ignore the between-model
    # variance, so on their own they would name classes of an undrifted production model too
    # often. Without controls (the original protocol) only the seed rule is available.
    primary = attacks[config.primary_attack]
    if config.controls:
        is_drift = bool(primary["p_value"] <= config.alpha)
        corrected = np.asarray(primary["per_class"]["p_value_corrected"])
        drifted = [pool.class_names[c] for c in np.flatnonzero(corrected <= config.alpha)
                   if is_drift]
    else:
        is_drift, drifted = primary["seed_rule"]["is_drift"], []

    found = {}
    holdout_x = pool.images[holdout_ix].astype(np.float32) / 255
    if "disagreement" in config.baselines and config.controls:
        preds = stack_logits(spec, trained, holdout_x).argmax(-1)
        found["disagreement"] = baselines.disagreement(preds, production_index, controls)
    if plan.production is not None:
        prod_x = plan.production.images.astype(np.float32) / 255
        if "bbsd" in config.baselines:
            soft = lambda x: np.asarray(jax.nn.softmax(stack_logits(spec, base_vars, x)[0]))
            found["bbsd"] = baselines.bbsd(soft(holdout_x), soft(prod_x))
        if "mmd" in config.baselines:
            found["mmd"] = baselines.mmd_test(holdout_x, prod_x,
                                              jax.random.fold_in(plan.keys["test"], 99),
                                              config.permutations)
    for result in found.values():
        result["is_drift"] = bool(result["p_value"] <= config.alpha)
    timings["baselines"] = time.perf_counter() - clock
    return DriftReport(
        is_drift=is_drift, p_value=primary["p_value"],
        drifted_classes=drifted, attacks=attacks, baselines=found, accuracy=accuracy,
        timings=timings, config=to_dict(config), class_names=list(pool.class_names),
        scenario=plan.scenario, environment=runtime.environment(), gray=gray)


def summary_lines(report: DriftReport) -> list[str]:
    """The verdict a person reads first."""
    cfg = report.config
    verdict = "DRIFT" if report.is_drift else "no drift"
    decided_by = (f"p = {report.p_value:.3f} by {cfg['primary_attack']}, alpha {cfg['alpha']}, "
                  f"{cfg['controls']} control models" if cfg["controls"] else
                  f"uncalibrated: {cfg['primary_attack']} seed rule, no control models")
    lines = [f"verdict: {verdict} ({decided_by})",
             f"scenario: {report.scenario['name']} (severity {report.scenario['severity']})",
             f"classes that moved: {', '.join(report.drifted_classes) or 'none'}"]
    for name, a in report.attacks.items():
        calibrated = (f", controls {np.mean(a['control_scores']):.3f} -> p = "
                      f"{a['p_value']:.3f}" if a["control_scores"] else "")
        lines.append(f"  {name}: base {a['base_score']:.3f} (members "
                     f"{a['base_member_fraction']:.2f}), production {a['production_score']:.3f}"
                     f" (members {a['production_member_fraction']:.2f}){calibrated}; "
                     "permutation p = "
                     f"{a['permutation_test']['p_value']:.3f}; seed rule "
                     f"{'drift' if a['seed_rule']['is_drift'] else 'no drift'}")
    for name, b in report.baselines.items():
        lines.append(f"  baseline {name}: p = {b['p_value']:.3f}")
    return lines


def write_report(report: DriftReport, out: str | Path) -> Path:
    """report.json, config.json, summary.md, gray.npz and figures/, each written atomically;
    report.json last, so a folder with it holds a finished run."""
    from drift_jax import figures
    from drift_jax.files import atomic_write_bytes, atomic_write_json

    out = Path(out)
    atomic_write_json(out / "config.json", report.config)
    if report.gray is not None:
        report.gray.save(out / "gray.npz")
        figures.gray_grid(out / "figures" / "gray_base_vs_production.png",
                          report.gray.images[:2], report.class_names,
                          ["base model", "production model"], "gray data")
    for name, a in report.attacks.items():
        figures.score_bars(out / "figures" / f"scores_{name}.png", report.class_names,
                           a["per_class"], title=f"{name}: per-class score")
        if not a["control_scores"]:
            continue
        figures.null_distribution(out / "figures" / f"null_{name}.png", a["control_scores"],
                                  a["production_score"], a["base_score"],
                                  title=f"{name}: control null, p = {a['p_value']:.3f}")
    md = ["# drift_jax detect", "", *[f"- {line.strip()}" for line in summary_lines(report)],
          "", "| stage | seconds |", "|---|---|",
          *[f"| {k} | {v:.1f} |" for k, v in report.timings.items()]]
    atomic_write_bytes(out / "summary.md", ("\n".join(md) + "\n").encode())
    atomic_write_json(out / "report.json", report.to_json())
    return out


