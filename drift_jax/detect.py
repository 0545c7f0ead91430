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

import dataclasses
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
    scenario: str = "label_swap"  # applied to the production data; 'none' is the control
    severity: int = 5
    scenario_params: dict = dataclasses.field(default_factory=dict)
    arch: str = "seedcnn"
    seed: int = 0
    base_fraction: float = 0.25
    production_fraction: float = 0.2
    reference_fraction: float = 0.4  # controls' pool; the rest is held out
    controls: int = 19  # p >= 1 / (M + 1): M = 19 is the least that can reach 0.05
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
        if self.controls < 1:
            raise DriftJaxError("controls must be >= 1 (the p-value needs a null).")
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


def _splits(config: DetectConfig, base: Dataset, with_production: bool):
    """Index arrays (base, production or None, reference, holdout) into ``base``."""
    fractions = [config.base_fraction, config.reference_fraction]
    if with_production:
        fractions.insert(1, config.production_fraction)
    holdout = 1 - sum(fractions)
    if holdout <= 0:
        raise DriftJaxError("base, production and reference fractions leave no held-out data; "
                            "make them sum to less than 1.")
    parts = data_lib.stratified_split(base.labels, [*fractions, holdout], config.seed,
                                      base.num_classes)
    if with_production:
        return parts
    return parts[0], None, parts[1], parts[2]


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
                  base: Dataset, base_ix, reference_ix, holdout_ix, key):
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
    return attack.fit(base.images[pool], base.labels[pool], key)


def _score_attack(attack, gray: GrayData, config: DetectConfig, production: int,
                  controls: np.ndarray, key) -> dict:
    m, c, s = gray.images.shape[:3]
    flat = gray.images.reshape(m * c * s, *gray.images.shape[3:])
    scores = attack.score(flat, gray.labels.reshape(-1))
    prob = scores.probability.reshape(m, c, s)
    flagged = scores.decision.reshape(m, c, s).astype(float)
    per_class = prob.mean(2)  # [models, classes]
    overall = per_class.mean(1)
    p_value = float(stats_lib.calibrated_p_value(overall[controls], overall[production]))
    class_p = stats_lib.calibrated_p_value(per_class[controls], per_class[production])
    # Localisation: a rank among M controls cannot survive a correction over C classes unless
    # M >= C / alpha, so each class compares the production model's per-image scores with the
    # pooled per-image scores of the controls by permutation, then corrects over classes.
    class_perm = np.array([stats_lib.permutation_test(
        prob[controls, k].ravel(), prob[production, k].ravel(), jax.random.fold_in(key, k),
        config.permutations)["p_value"] for k in range(c)])
    corrected = stats_lib.CORRECTIONS[config.correction](class_perm)
    perm = stats_lib.permutation_test(prob[0].ravel(), prob[production].ravel(), key,
                                      config.permutations)
    base_frac, prod_frac = flagged[0].mean(), flagged[production].mean()
    return {
        "base_score": float(overall[0]), "production_score": float(overall[production]),
        "control_scores": overall[controls].tolist(), "p_value": p_value,
        "base_member_fraction": float(base_frac), "production_member_fraction": float(prod_frac),
        "per_class": {"base": per_class[0].tolist(), "production": per_class[production].tolist(),
                      "control_mean": per_class[controls].mean(0).tolist(),
                      "p_value_rank": class_p.tolist(), "p_value": class_perm.tolist(),
                      "p_value_corrected": corrected.tolist()},
        "permutation_test": perm,
        "seed_rule": {"ratio": SEED_RULE_RATIO,
                      "is_drift": bool(prod_frac < SEED_RULE_RATIO * base_frac)},
    }


def detect_drift(config: DetectConfig, base: Dataset | None = None,
                 production: Dataset | None = None, progress: bool = True) -> DriftReport:
    """Runs the seven steps; see the module docstring. Returns a `DriftReport`."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = now - clock
        clock = now

    base = base if base is not None else data_lib.load(config.base)
    split_production = production is None and not config.production and \
        not config.production_model
    base_ix, prod_ix, reference_ix, holdout_ix = _splits(config, base, split_production)
    prod_data, scenario = _production_data(config, base, production, prod_ix)
    spec = ModelSpec(config.arch, base.num_classes, base.image_shape)
    key = jax.random.key(config.seed)
    k_init, k_train, k_inv, k_attack, k_test = jax.random.split(key, 5)

    # Steps 1-2 and the controls: one stack, one image array on the device.
    images, labels = base.images, base.labels
    indices = [base_ix]
    if prod_data is not None:
        images = np.concatenate([base.images, prod_data.images])
        labels = np.concatenate([base.labels, prod_data.labels])
        indices.append(len(base) + np.arange(len(prod_data)))
        control_size = len(prod_data)
    else:
        control_size = len(base_ix)
    rng = np.random.default_rng(config.seed + 1)
    replace = control_size > len(reference_ix)
    indices += [rng.choice(reference_ix, control_size, replace=replace)
                for _ in range(config.controls)]
    variables = stack.init_stack(spec, jax.random.split(k_init, len(indices)))
    trained = stack.train_stack(spec, variables, images, labels, indices, config.train, k_train,
                                progress=progress).variables
    if prod_data is None:
        prod_spec, prod_vars, _ = stack.load_stack(config.production_model, expect=spec)
        one = stack.member(prod_vars, slice(0, 1))
        trained = jax.tree.map(lambda s, p: np.concatenate([s[:1], p, s[1:]]), trained, one)
    production_index, controls = 1, np.arange(2, 2 + config.controls)
    lap("train")
    evaluation = stack.evaluate_stack(spec, trained, base.images[holdout_ix],
                                      base.labels[holdout_ix])
    accuracy = {"base": evaluation["accuracy"][0], "production": evaluation["accuracy"][1],
                "controls": evaluation["accuracy"][2:]}

    # Steps 3-4: gray data of every model, one program.
    gray = invert(spec, trained, range(base.num_classes), config.inversion, k_inv,
                  progress=progress)
    lap("invert")

    # Steps 5-6: membership inference against the base model.
    base_vars = stack.member(trained, slice(0, 1))
    attacks = {}
    for i, name in enumerate(config.attacks):
        attack = _build_attack(name, config, spec, base_vars, base, base_ix, reference_ix,
                                  holdout_ix, jax.random.fold_in(k_attack, i))
        attacks[name] = _score_attack(attack, gray, config, production_index, controls,
                                      jax.random.fold_in(k_test, i))
        lap(f"attack_{name}")

    # Step 7: the calibrated decision. Classes are named only when the global test rejects
    # (gatekeeping): per-image permutation p-values ignore the between-model variance, so on
    # their own they would name classes of an undrifted production model too often.
    primary = attacks[config.primary_attack]
    is_drift = bool(primary["p_value"] <= config.alpha)
    corrected = np.asarray(primary["per_class"]["p_value_corrected"])
    drifted = [base.class_names[c] for c in np.flatnonzero(corrected <= config.alpha)
               if is_drift]

    found = {}
    if "disagreement" in config.baselines:
        preds = stack_logits(spec, trained, base.images[holdout_ix].astype(np.float32)
                             / 255).argmax(-1)
        found["disagreement"] = baselines.disagreement(preds, production_index, controls)
    if prod_data is not None:
        base_x = base.images[holdout_ix].astype(np.float32) / 255
        prod_x = prod_data.images.astype(np.float32) / 255
        if "bbsd" in config.baselines:
            soft = lambda x: np.asarray(jax.nn.softmax(stack_logits(spec, base_vars, x)[0]))
            found["bbsd"] = baselines.bbsd(soft(base_x), soft(prod_x))
        if "mmd" in config.baselines:
            found["mmd"] = baselines.mmd_test(base_x, prod_x, jax.random.fold_in(k_test, 99),
                                              config.permutations)
    for result in found.values():
        result["is_drift"] = bool(result["p_value"] <= config.alpha)
    lap("baselines")
    timings["total"] = sum(timings.values())
    return DriftReport(
        is_drift=is_drift, p_value=primary["p_value"],
        drifted_classes=drifted, attacks=attacks, baselines=found, accuracy=accuracy,
        timings=timings, config=to_dict(config), class_names=list(base.class_names),
        scenario=scenario, environment=runtime.environment(), gray=gray)


def summary_lines(report: DriftReport) -> list[str]:
    """The verdict a person reads first."""
    cfg = report.config
    verdict = "DRIFT" if report.is_drift else "no drift"
    lines = [f"verdict: {verdict} (p = {report.p_value:.3f} by {cfg['primary_attack']}, "
             f"alpha {cfg['alpha']}, {cfg['controls']} control models)",
             f"scenario: {report.scenario['name']} (severity {report.scenario['severity']})",
             f"classes that moved: {', '.join(report.drifted_classes) or 'none'}"]
    for name, a in report.attacks.items():
        lines.append(f"  {name}: base {a['base_score']:.3f}, production "
                     f"{a['production_score']:.3f}, controls {np.mean(a['control_scores']):.3f}"
                     f" -> p = {a['p_value']:.3f}; permutation p = "
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
        figures.null_distribution(out / "figures" / f"null_{name}.png", a["control_scores"],
                                  a["production_score"], a["base_score"],
                                  title=f"{name}: control null, p = {a['p_value']:.3f}")
    md = ["# drift_jax detect", "", *[f"- {line.strip()}" for line in summary_lines(report)],
          "", "| stage | seconds |", "|---|---|",
          *[f"| {k} | {v:.1f} |" for k, v in report.timings.items()]]
    atomic_write_bytes(out / "summary.md", ("\n".join(md) + "\n").encode())
    atomic_write_json(out / "report.json", report.to_json())
    return out


