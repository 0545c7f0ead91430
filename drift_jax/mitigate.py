"""From detection to recovery (docs/METHOD.md, "Mitigation"): `mitigate` trains candidate
updated models for a finished `detect` run, all as one stack, and measures each one.

Strategies, every trained one a member of one `stack.train_stack` program (one recipe: the run's):

  fine_tune   the base model fine-tuned on the production data
  retrain     a fresh model trained on base + production data
  targeted    the base model fine-tuned on the changed classes' production data, with replay
              of the base data of the other classes (rehearsal)
  replay      the base model fine-tuned on all the production data, with replay of the base
              data of the unchanged classes (experience replay: the new concept, and new images
              of the old classes, without forgetting the old ones)
  wise_ft     weight-space interpolation (1 - w) * base + w * fine_tune over a grid of w
              (WiSE-FT, Wortsman et al. 2022); no training of its own
  distill     production *model* only: the base model fine-tuned on base images whose targets
              are the production model's probabilities for the changed classes' images and the
              base labels elsewhere (knowledge distillation, Hinton et al. 2015; soft targets)

The changed classes are the flagged ones (the run's, or ``classes``) and their partners: the
classes whose images the new concept moves into or out of a flagged class (a relabel a -> b
flagged at b only also changes a). A partner is a class c with at least ``partner_threshold`` of
its production images (by the base model's answer) labelled as a flagged class f, or of f's
labelled c; with only a production model, its answers on the base images stand for the labels.

The base and production models are reference rows. Every candidate is evaluated on held-out
production-distribution data (the new concept) and on held-out base data (forgetting), and the
run's calibrated test is re-run with the candidate in place of the base model: the run's primary
attack targets the candidate, and the production model's gray data is ranked among the same
control models' (their gray data is the run's; only the candidates are inverted). The
recommendation rule: the best production accuracy among the candidates that lose at most
``max_forgetting`` points of accuracy on the unchanged classes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from drift_jax import config as config_lib
from drift_jax import data as data_lib
from drift_jax import detect as detect_lib
from drift_jax import membership, runtime, stack, streams
from drift_jax.config import TrainConfig
from drift_jax.data import Dataset
from drift_jax.data import scenarios as scenarios_lib
from drift_jax.errors import DriftJaxError
from drift_jax.files import atomic_folder, atomic_write_bytes, atomic_write_json
from drift_jax.inversion import GrayData, invert
from drift_jax.models import ModelSpec
from drift_jax.report import MODEL_MEMBERS, read_run_report
from drift_jax.validate import bounded, check_fields

STRATEGIES = ("fine_tune", "retrain", "targeted", "replay", "wise_ft", "distill")
NEEDS_PRODUCTION_DATA = tuple(s for s in STRATEGIES if s != "distill")
# the stack's members, in this order (a member's training key is its position)
TRAINED = tuple(s for s in STRATEGIES if s != "wise_ft")
REFERENCES = MODEL_MEMBERS  # base, production


@dataclasses.dataclass(frozen=True)
class MitigateConfig:
    """`drift-jax mitigate`. ``strategies`` None: every strategy the run allows (only
    ``distill`` when the run was given a production model and no production data)."""

    strategies: tuple[str, ...] | None = None
    wise_ft_weights: tuple[float, ...] = (0.25, 0.5, 0.75)
    # class names to mitigate; None: the classes the run flagged
    classes: tuple[str, ...] | None = None
    # the recipe is the run's (`DetectConfig.train`) but for these, when given
    epochs: int | None = bounded(None, ge=1)
    learning_rate: float | None = bounded(None, gt=0)
    # with given production data: the stratified share held out to evaluate on
    production_holdout_fraction: float = bounded(0.2, gt=0, lt=1)
    max_forgetting: float = bounded(1.0, ge=0)  # points of accuracy on the unchanged classes
    # share of a class's production images moved into or out of a flagged class that makes it a
    # partner (changed too); None: only the flagged classes
    partner_threshold: float | None = bounded(0.1, gt=0, le=1)
    retest: bool = True

    def __post_init__(self):
        check_fields(self)
        if self.strategies is not None:
            unknown = [s for s in self.strategies if s not in STRATEGIES]
            if unknown or not self.strategies:
                raise DriftJaxError(f"strategies must be a non-empty list from "
                                    f"{', '.join(STRATEGIES)}; got {list(self.strategies)}.")
        if self.classes is not None and not self.classes:
            raise DriftJaxError("classes is an empty list; name the classes to mitigate, or "
                                "leave classes null for the classes the run flagged.")
        if not self.wise_ft_weights or not all(0 < w < 1 for w in self.wise_ft_weights):
            raise DriftJaxError(f"wise_ft_weights must be mixing weights strictly between 0 and 1 "
                                f"(0 is the base model, 1 fine_tune); got "
                                f"{list(self.wise_ft_weights)}.")


@dataclasses.dataclass
class Run:
    """A finished detect run folder, read and checked."""

    path: Path
    report: detect_lib.DriftReport
    config: detect_lib.DetectConfig
    spec: ModelSpec
    models: dict  # leaves [2, ...]: base, production
    gray: GrayData  # [2 + M, C, S]


def load_run(path: str | Path) -> Run:
    """Reads a detect run folder (report.json, models/, gray.npz); any problem is one error
    that names it."""
    path = Path(path)
    fix = "pass a folder that `drift-jax detect --out` finished writing, or run detect again."
    if not path.is_dir():
        raise DriftJaxError(f"--run {path} does not exist or is not a folder; {fix}")
    if not (path / "report.json").exists():
        raise DriftJaxError(f"--run {path} is not a finished detect run (no report.json); {fix}")
    report = read_run_report(path, fix)
    try:
        config = config_lib.from_dict(detect_lib.DetectConfig, report.config, "config")
    except DriftJaxError as e:  # the file's fault, not the command line's: say so
        raise DriftJaxError(f"run report {path / 'report.json'} holds a config this drift_jax "
                            f"cannot use ({e}); {fix}") from None
    if config.stat in detect_lib.MODEL_STATISTICS:  # they need the controls, not kept in a run
        raise DriftJaxError(f"--run {path} was decided by stat={config.stat!r}, a statistic of "
                            "the control models, which a run does not keep, so mitigation "
                            "cannot re-test with it; run detect with stat='omnibus' (the "
                            "default) or one of the attack's statistics.")
    if not (path / "models" / "stack.json").exists():
        raise DriftJaxError(f"--run {path} has no models/ checkpoint (runs written before "
                            f"drift_jax saved the base and production models); {fix}")
    spec, models, _ = stack.load_stack(path / "models")
    gray = GrayData.load(path / "gray.npz")
    if stack.stack_size(models) != 2 or gray.images.shape[0] != 2 + config.controls or \
            gray.images.shape[1] != spec.num_classes:
        raise DriftJaxError(f"--run {path}: models/ holds {stack.stack_size(models)} models and "
                            f"gray.npz {gray.images.shape[0]} models x {gray.images.shape[1]} "
                            f"classes, expected 2 and {2 + config.controls} x "
                            f"{spec.num_classes}; {fix}")
    return Run(path, report, config, spec, models, gray)


@dataclasses.dataclass(frozen=True)
class MitigationData:
    """One image array for training and evaluation: the pool, the production data, held-out
    production-distribution images, and copies of the base images for distillation; targets are
    label distributions [rows, C] (one-hot but for distillation rows)."""

    images: np.ndarray
    targets: np.ndarray  # float [rows, C]
    labels: np.ndarray  # int [rows]: the targets' argmax
    base: np.ndarray  # rows of the base model's training data
    production: np.ndarray  # rows the candidates may train on (empty without production data)
    production_eval: np.ndarray  # held-out production-distribution rows
    distill: np.ndarray  # rows: base images with the production model's targets
    holdout: np.ndarray  # the run's held-out rows (the attacks' non-members)
    reference: np.ndarray  # the controls' pool (held out from the base model too)
    production_eval_kind: str  # "labels" or "production model agreement"
    changed: np.ndarray  # class indices: the flagged ones and their partners
    keys: dict  # the run's per-seed keys (detect's: init, train, invert, attack, test)

    @property
    def base_eval(self) -> np.ndarray:
        """Held-out base-distribution rows: never seen by the base model or a candidate."""
        return np.concatenate([self.holdout, self.reference])


def build_data(run: Run, config: MitigateConfig, base: Dataset | None,
                production: Dataset | None, flagged: np.ndarray) -> MitigationData:
    """The run's data rebuilt from its config and seed (the same splits and production data as
    detect's), its held-out production-distribution images, the changed classes (``flagged`` and
    their partners, module docstring) and the distillation targets for them. ``base`` /
    ``production`` as for `detect_drift`."""
    cfg, spec = run.config, run.spec
    base = base if base is not None else data_lib.load(cfg.base)
    pool, holdout_ix = detect_lib.with_holdout(cfg, base)
    if list(pool.class_names) != list(run.report.class_names):
        raise DriftJaxError(f"the data's class names {list(pool.class_names)} do not match the "
                            f"run's {run.report.class_names}; pass the data the run used "
                            f"({cfg.base}).")
    if (spec.num_classes, spec.image_shape) != (pool.num_classes, pool.image_shape):
        raise DriftJaxError(f"the data ({pool.num_classes} classes of {pool.image_shape}) does not "
                            f"match the run's models ({spec.num_classes} of {spec.image_shape}).")
    plan = detect_lib.plan_seed(cfg, pool, base.labels, holdout_ix, production,
                                stored_splits(run, len(pool)))
    split = plan.split
    base_eval = np.concatenate([split.holdout, split.reference])
    parts_images, parts_labels = [pool.images], [pool.labels]
    offset = len(pool)

    def append(images, labels):
        nonlocal offset
        parts_images.append(images), parts_labels.append(labels)
        rows = offset + np.arange(len(images))
        offset += len(images)
        return rows

    prod_rows, held = np.zeros(0, np.int64), pool.images[base_eval]
    if plan.production is None:  # a production model only: agreement with it
        kind, prod_eval = "production model agreement", append(
            held, _predict(spec, run.models, held, 1).argmax(-1))
    elif split.production is not None:  # split off the base data: fresh held-out copies
        kind = "labels"
        prod_rows = append(plan.production.images, plan.production.labels)
        images, labels = scenarios_lib.apply(
            cfg.scenario, held, pool.labels[base_eval],
            streams.key(cfg.seed, "mitigation_scenario"), cfg.severity,
            class_names=pool.class_names, **cfg.scenario_params)
        prod_eval = append(images, labels)
    else:  # given production data: hold out a stratified share
        kind = "labels"
        present, strata = np.unique(plan.production.labels, return_inverse=True)  # a scenario
        train_ix, eval_ix = data_lib.stratified_split(  # may empty a class: stratify the rest
            strata, [1 - config.production_holdout_fraction, config.production_holdout_fraction],
            streams.generator(cfg.seed, "mitigation_split"), len(present))
        prod_rows = append(plan.production.images[train_ix], plan.production.labels[train_ix])
        prod_eval = append(plan.production.images[eval_ix], plan.production.labels[eval_ix])
    base_images = pool.images[split.base]
    teacher = jax.nn.softmax(_predict(spec, run.models, base_images, 1), -1)
    changed = flagged
    if config.partner_threshold is not None:
        base_answers = _predict(spec, run.models, held, 0).argmax(-1)
        if len(prod_rows):  # the base model's answers against the new labels (appended first)
            old = _predict(spec, run.models, parts_images[1], 0).argmax(-1)
            new = parts_labels[1]
        else:  # the production model's answers stand for the labels
            old, new = base_answers, _predict(spec, run.models, held, 1).argmax(-1)
        changed = partner_classes(old, new, flagged, spec.num_classes, config.partner_threshold,
                                  (base_answers, pool.labels[base_eval]))
    # distillation targets: the production model's probabilities where the base image's label
    # or the production model's answer is a changed class, the base label elsewhere
    hard = np.eye(spec.num_classes, dtype=np.float32)[pool.labels[split.base]]
    drifted = np.isin(pool.labels[split.base], changed) | np.isin(teacher.argmax(-1), changed)
    distill = append(base_images, np.zeros(len(base_images), np.int64))
    targets = np.eye(spec.num_classes, dtype=np.float32)[np.concatenate(parts_labels)]
    targets[distill] = np.where(drifted[:, None], teacher, hard)
    return MitigationData(np.concatenate(parts_images), targets,
                          targets.argmax(-1).astype(np.int32), split.base, prod_rows,
                          prod_eval, distill, split.holdout, split.reference, kind,
                          changed, plan.keys)


def stored_splits(run: Run, pool_size: int) -> detect_lib.Splits | None:
    """The run's own splits (splits.npz), so that mitigation trains and evaluates on exactly
    the rows detect used; None for runs written before runs stored them (then they are
    recomputed from the config and seed)."""
    stored = run.report.splits
    if stored is None:
        return None
    rows = np.concatenate([v.ravel() for k, v in stored.items() if k != "controls"])
    if rows.size and rows.max() >= pool_size:
        raise DriftJaxError(f"--run {run.path}: its splits.npz indexes {rows.max() + 1} images, "
                            f"the data given has {pool_size}; pass the data the run used "
                            f"({run.config.base}).")
    return detect_lib.Splits(stored["base"], stored.get("production"), stored["reference"],
                             stored["holdout"])


def partner_classes(old: np.ndarray, new: np.ndarray, flagged: np.ndarray, num_classes: int,
                    threshold: float, reference: tuple | None = None) -> np.ndarray:
    """The flagged classes and their partners (module docstring): ``old`` [n] the base model's
    answers, ``new`` [n] the new labels of the same images. A class c joins when at least
    ``threshold`` of the images answered c are labelled a flagged class f, or of those answered f
    are labelled c, beyond the base model's own errors: ``reference`` (its answers, the true
    labels) on held-out base data, whose rates are subtracted."""

    def rates(answers, labels):  # row c: where the images answered c went
        counts = np.zeros((num_classes, num_classes))
        np.add.at(counts, (answers, labels), 1.0)
        counts /= np.maximum(counts.sum(1, keepdims=True), 1.0)
        np.fill_diagonal(counts, 0.0)
        return counts

    moved = rates(old, new) - (rates(*reference) if reference is not None else 0.0)
    share = np.maximum(moved[:, flagged].max(1), moved[flagged].max(0))
    return np.union1d(flagged, np.flatnonzero(share >= threshold))


def _predict(spec: ModelSpec, models: dict, images: np.ndarray, member: int) -> np.ndarray:
    """Logits [n, C] of one member of a stack."""
    return np.asarray(stack.predict(spec, stack.member(models, [member]), images))[0]


def _strategies(run: Run, config: MitigateConfig, has_production_data: bool) -> list[str]:
    if config.strategies is None:
        return list(STRATEGIES if has_production_data else ("distill",))
    wanting = [s for s in config.strategies if s in NEEDS_PRODUCTION_DATA]
    if wanting and not has_production_data:
        raise DriftJaxError(f"strategies {', '.join(wanting)} train on production data, but run "
                            f"{run.path} was given only a production model; use "
                            "--strategies distill.")
    return list(dict.fromkeys(config.strategies))


def _flagged_classes(run: Run, config: MitigateConfig) -> np.ndarray:
    names = list(run.report.class_names)
    chosen = config.classes if config.classes is not None else run.report.drifted_classes
    unknown = [c for c in chosen if c not in names]
    if unknown:
        raise DriftJaxError(f"classes {unknown} are not classes of the run; choose from "
                            f"{', '.join(names)}.")
    if not chosen:
        raise DriftJaxError(
            f"run {run.path} flagged no drifted class (drift: {run.report.is_drift}, p = "
            f"{run.report.p_value}), so there is nothing to mitigate; to mitigate anyway, "
            "choose the classes by hand with --classes NAME,NAME.")
    return np.array(sorted(names.index(c) for c in chosen))


@dataclasses.dataclass
class Candidates:
    """The reference rows and candidates as one stack [K], with their names and training
    images seen (epochs x subset size; 0 for references and interpolations)."""

    names: list[str]
    variables: dict
    images_seen: list[int]


def train_candidates(run: Run, data: MitigationData, strategies: list[str], train: TrainConfig,
                     weights, progress: bool = True) -> Candidates:
    """Every trained strategy as one member of one stack, then the interpolations."""
    spec, labels = run.spec, data.labels
    in_flagged = np.isin(labels, data.changed)
    subsets = {
        "fine_tune": data.production,
        "retrain": np.concatenate([data.base, data.production]),
        "targeted": np.concatenate([data.production[in_flagged[data.production]],
                                    data.base[~in_flagged[data.base]]]),
        "replay": np.concatenate([data.production, data.base[~in_flagged[data.base]]]),
        "distill": data.distill}
    trained = [s for s in TRAINED
               if s in strategies or (s == "fine_tune" and "wise_ft" in strategies)]
    for name in trained:
        if len(subsets[name]) == 0:
            raise DriftJaxError(f"strategy {name} has no training data (the changed classes "
                                f"{data.changed.tolist()} have no production images); choose other "
                                "--classes or strategies.")
    # Assembled on the host: the stacks are small, and numpy builds them without compiling.
    key = streams.key(run.config.seed, "mitigation_train")
    models = jax.device_get(run.models)
    start = jax.tree.map(lambda b: np.repeat(b[:1], len(trained), 0), models)
    if "retrain" in trained:  # a fresh start for the retrained member
        fresh = np.array([n == "retrain" for n in trained])
        start = jax.tree.map(lambda b, f: np.where(fresh.reshape(-1, *[1] * (b.ndim - 1)), f, b),
                             start, jax.device_get(stack.init_stack(spec, stack.per_member_keys(
                                 streams.fold(key, "init"), len(trained)))))
    result = jax.device_get(stack.train_stack(
        spec, start, data.images, data.targets, [subsets[n] for n in trained], train,
        stack.per_member_keys(streams.fold(key, "train"), len(trained)),
        progress=progress).variables)
    names, members, seen = list(REFERENCES), [models], [0] * len(REFERENCES)
    for i, name in enumerate(trained):
        if name in strategies:
            names.append(name)
            members.append(jax.tree.map(lambda r, i=i: r[i:i + 1], result))
            seen.append(train.epochs * len(subsets[name]))
    if "wise_ft" in strategies:
        tuned = trained.index("fine_tune")
        for w in weights:
            names.append(f"wise_ft@{w:g}")
            members.append(jax.tree.map(lambda b, t, w=w: (1 - w) * b[:1] + w * t[tuned:tuned + 1],
                                        models, result))
            seen.append(0)
    variables = jax.tree.map(lambda *xs: np.concatenate(xs), *members)
    return Candidates(names, variables, seen)


def evaluate(spec: ModelSpec, candidates: Candidates, data: MitigationData, images) -> dict:
    """Accuracy of every candidate on the held-out production-distribution and base data,
    overall and per class ([K] and [K, C]; NaN for a class without images), and
    ``forgetting`` [K]: points of accuracy lost against the base model (row 0) on the
    base-distribution images of the unchanged classes."""
    rows = np.concatenate([data.production_eval, data.base_eval])
    logits = np.asarray(stack.predict(spec, candidates.variables, images, rows))
    labels = np.broadcast_to(data.labels[rows], logits.shape[:2])
    n_prod, out = len(data.production_eval), {}
    for part, sel in (("production", slice(0, n_prod)), ("base", slice(n_prod, None))):
        acc = stack.accuracy_from_logits(logits[:, sel], labels[:, sel], spec.num_classes)
        present = np.isin(np.arange(spec.num_classes), labels[0, sel])
        out[part] = {"accuracy": np.asarray(acc["accuracy"]),  # a class without images: NaN
                     "per_class": np.where(present, acc["per_class_accuracy"], np.nan)}
    kept = ~np.isin(data.labels[data.base_eval], data.changed)
    hit = logits[:, n_prod:].argmax(-1) == labels[:, n_prod:]
    undrifted = hit[:, kept].mean(1) if kept.any() else np.full(len(candidates.names), np.nan)
    out["undrifted_accuracy"] = undrifted
    out["forgetting"] = 100.0 * (undrifted[0] - undrifted)
    return out


def retest(run: Run, candidates: Candidates, data: MitigationData, images,
           clock: runtime.StageClock, progress: bool = True) -> list[dict]:
    """The run's calibrated test with each candidate in place of the base model: the primary
    attack (fitted against the candidate as detect fits it against the base model) scores the
    candidate's own gray data, the production model's and the controls' (the run's gray data;
    the candidates are inverted as one stack), and the production model's score is ranked among
    the controls'. The omnibus combines the attack's parts of `detect.OMNIBUS` only
    (`retest_statistic` names them): its model statistics need the control models, which a run
    does not keep (and self-confidence does not involve the base model at all). The base
    model's row repeats that test. One dict per candidate: ``p_value``, ``is_drift`` and the
    classes still flagged."""
    cfg, spec = run.config, run.spec
    k, c = len(candidates.names), spec.num_classes
    with clock("invert"):
        new = np.arange(len(REFERENCES), k)
        keys = stack.per_member_keys(streams.key(cfg.seed, "mitigation_invert"), len(new))
        own = run.gray.images[:len(REFERENCES)]
        if len(new):
            own = np.concatenate([own, invert(spec, stack.member(candidates.variables, new),
                                              range(c), cfg.inversion, keys,
                                              progress=progress).images])
    with clock("retest"):
        rest = run.gray.images[1:]  # production, controls
        gray = np.concatenate([own[:, None], np.broadcast_to(rest[None], (k, *rest.shape))], 1)
        num_models, samples = gray.shape[1], gray.shape[3]
        name = cfg.primary_attack
        members, nonmembers = detect_lib.attack_rows(cfg, detect_lib.Splits(
            data.base, None, data.reference, data.holdout))
        attack_key = streams.fold(data.keys["attack"], name)  # detect's stream of the attack
        context = membership.AttackContext(
            spec, candidates.variables, images, data.labels, np.tile(members, (k, 1)),
            np.tile(nonmembers, (k, 1)), jnp.stack([attack_key] * k))
        if membership.ATTACKS[name].needs_shadows:  # shadows depend on the pool only: share
            pool = np.concatenate([data.reference, data.holdout])  # detect's shadow pool
            one = membership.train_shadows(
                spec, images, data.labels, pool[None], cfg.num_shadows, cfg.train,
                streams.fold(data.keys["attack"], "shadows")[None],
                progress)
            context = dataclasses.replace(context, shadows=dataclasses.replace(
                one, variables=stack.member(one.variables, np.tile(
                    np.arange(cfg.num_shadows), k)), pool=np.tile(one.pool, (k, 1)),
                keep=np.tile(one.keep, (k, 1, 1))))
        attack = membership.ATTACKS[name]().fit(context)
        scores = attack.score(gray.reshape(k, -1, *gray.shape[4:]),
                              np.broadcast_to(np.arange(c)[None, None, :, None],
                                              gray.shape[:4]).reshape(k, -1))
        scores = detect_lib.GrayScores.from_membership(scores, attack.oriented_score,
                                                       (k, num_models, c, samples))
        class_statistics = detect_lib.attack_statistics(
            scores, detect_lib.recorded_statistics(cfg))
        results = detect_lib.score_attack(scores, class_statistics, cfg,
                                          jnp.stack([data.keys["test"]] * k), name)
    names = np.array(run.report.class_names)
    out = []
    for r in results:
        is_drift = bool(r.p_value <= cfg.alpha)
        corrected = r.per_class.p_value_corrected
        out.append({"attack": name, "statistic": retest_statistic(cfg, class_statistics),
                    "p_value": r.p_value,
                    "is_drift": is_drift,
                    "still_flagged": names[corrected <= cfg.alpha].tolist() if is_drift else [],
                    "per_class_p_value_corrected": corrected.tolist()})
    return out


def retest_statistic(config: detect_lib.DetectConfig, class_statistics: dict) -> str:
    """The re-test's statistic by what it combines: the omnibus of a re-test has only the
    attack's parts (`detect.OMNIBUS` without the model statistics, which need the controls)."""
    if config.stat != "omnibus":
        return config.decision_name
    parts = [s for s, _ in detect_lib.OMNIBUS if s in class_statistics]
    return f"omnibus[{','.join(parts)}]/min_rank"


def recommend(rows: list[dict], max_forgetting: float) -> tuple[str | None, str]:
    """The rule: the best production accuracy among candidates (not the reference rows) whose
    forgetting on the unchanged classes is at most ``max_forgetting`` points. When every class
    changed, forgetting is not measurable (None) and the rule is production accuracy alone."""
    candidates = [r for r in rows if r["kind"] == "candidate"]
    if candidates and all(r["forgetting_points"] is None for r in candidates):
        best = max(candidates, key=lambda r: r["production_accuracy"])
        return best["name"], (f"best production accuracy ({best['production_accuracy']:.3f}); "
                              "every class changed, so forgetting could not be measured")
    eligible = [r for r in candidates if r["forgetting_points"] is not None
                and r["forgetting_points"] <= max_forgetting + 1e-9]
    if not eligible:
        return None, (f"no candidate loses at most {max_forgetting:g} points on the classes not "
                      "changed; none is recommended (raise max_forgetting to relax the rule).")
    best = max(eligible, key=lambda r: r["production_accuracy"])
    return best["name"], (f"best production accuracy ({best['production_accuracy']:.3f}) among "
                          f"the {len(eligible)} candidate(s) losing at most {max_forgetting:g} "
                          "points on the unchanged classes")


@dataclasses.dataclass
class MitigationReport:
    """What `mitigate` measured; `to_json()` is what report.json holds. ``model``: (spec,
    variables [1]) of the recommended candidate."""

    run: str
    flagged_classes: list[str]
    changed_classes: list[str]  # flagged and their partners
    candidates: list[dict]
    recommended: str | None
    rule: str
    production_eval: str
    alpha: float
    timings: dict
    config: dict
    class_names: list[str]
    environment: dict
    model: tuple | None = None

    def to_json(self) -> dict:
        out = dataclasses.asdict(dataclasses.replace(self, model=None))
        out.pop("model")
        return out


def mitigate(run_dir: str | Path, config: MitigateConfig = MitigateConfig(),
             base: Dataset | None = None, production: Dataset | None = None,
             progress: bool = True) -> MitigationReport:
    """Trains, evaluates and re-tests the candidate updates of a finished detect run (module
    docstring). ``base`` / ``production``: the run's datasets when they are not loadable from
    its config's specs (as `detect_drift` takes them)."""
    clock = runtime.StageClock()
    with clock("data"):
        run = load_run(run_dir)
        flagged = _flagged_classes(run, config)
        data = build_data(run, config, base, production, flagged)
        strategies = _strategies(run, config, len(data.production) > 0)
        images = jax.device_put(data.images)
        train = dataclasses.replace(run.config.train, **{
            k: v for k in ("epochs", "learning_rate") if (v := getattr(config, k)) is not None})
    with clock("train"):
        candidates = train_candidates(run, data, strategies, train,
                                      config.wise_ft_weights, progress)
    with clock("evaluate"):
        measured = evaluate(run.spec, candidates, data, images)
    tests = (retest(run, candidates, data, images, clock, progress)
             if config.retest and run.config.controls else [None] * len(candidates.names))
    class_names = list(run.report.class_names)
    rows = []
    for i, name in enumerate(candidates.names):
        rows.append({
            "name": name, "kind": "reference" if name in REFERENCES else "candidate",
            "production_accuracy": float(measured["production"]["accuracy"][i]),
            "production_per_class": _or_none(measured["production"]["per_class"][i]),
            "base_accuracy": float(measured["base"]["accuracy"][i]),
            "base_per_class": _or_none(measured["base"]["per_class"][i]),
            "undrifted_accuracy": _or_none(measured["undrifted_accuracy"][i:i + 1])[0],
            "forgetting_points": _or_none(measured["forgetting"][i:i + 1])[0],
            "images_seen": candidates.images_seen[i], "retest": tests[i]})
    recommended, rule = recommend(rows, config.max_forgetting)
    total = sum(clock.seconds.values())
    detect_total = run.report.timings.get("total")
    timings = {**clock.seconds, "total": total, "compiles": clock.compiles,
               "detect_total": detect_total,
               "cost_vs_detect": total / detect_total if detect_total else None}
    model = None
    if recommended is not None:
        model = (run.spec, stack.member(candidates.variables,
                                        [candidates.names.index(recommended)]))
    return MitigationReport(
        str(run.path), [class_names[k] for k in flagged],
        [class_names[k] for k in data.changed], rows, recommended, rule,
        data.production_eval_kind, run.config.alpha, timings,
        {**config_lib.to_dict(config), "strategies": strategies}, class_names,
        runtime.environment(), model)


def _or_none(values: np.ndarray) -> list:
    """JSON-ready: NaN (a class without images) as null."""
    return [None if np.isnan(v) else float(v) for v in values]


def _points(value: float | None) -> str:
    return "n/a (no unchanged class)" if value is None else f"{value:+.1f} pt"


def summary_lines(report: MitigationReport) -> list[str]:
    lines = [f"mitigating classes {', '.join(report.changed_classes)} (flagged: "
             f"{', '.join(report.flagged_classes)}) of run {report.run}",
             f"recommended: {report.recommended or 'none'} ({report.rule})"]
    for r in report.candidates:
        test = r["retest"]
        verdict = ("" if test is None else
                   f", re-test p = {test['p_value']:.3f} "
                   f"({'still drift' if test['is_drift'] else 'no drift'})")
        lines.append(f"  {r['name']:<14} production acc {r['production_accuracy']:.3f}, base acc "
                     f"{r['base_accuracy']:.3f}, forgetting {_points(r['forgetting_points'])}"
                     + verdict)
    t = report.timings
    if t.get("cost_vs_detect"):
        lines.append(f"  {t['total']:.1f} s, {t['cost_vs_detect']:.2f}x the detect run")
    return lines


def write_mitigation(report: MitigationReport, out: str | Path, overwrite: bool = False) -> Path:
    """The mitigation folder, written whole or not at all (`files.atomic_folder`; a finished
    one there is replaced only with ``overwrite``): report.json, config.json, summary.md,
    figures/ and model/ (the recommended candidate, an orbax stack of one)."""
    from drift_jax import figures

    out = Path(out)
    with atomic_folder(out, overwrite) as tmp:
        atomic_write_json(tmp / "config.json", {"run": report.run, **report.config})
        if report.model is not None:
            stack.save_stack(tmp / "model", *report.model, {"strategy": report.recommended,
                                                            "run": report.run})
        rows = report.candidates
        base_row = rows[0]
        figures.grouped_bars(
            tmp / "figures" / "recovery.png", report.class_names,
            {r["name"]: np.asarray(r["production_per_class"], float) for r in rows},
            f"accuracy ({report.production_eval})", "production-distribution accuracy per class",
            (0, 1.05))
        figures.grouped_bars(
            tmp / "figures" / "forgetting.png", report.class_names,
            {r["name"]: 100 * (np.asarray(base_row["base_per_class"], float)
                               - np.asarray(r["base_per_class"], float)) for r in rows[1:]},
            "points lost vs base", "forgetting: base-distribution accuracy lost per class")
        if rows[0]["retest"] is not None:
            figures.grouped_bars(
                tmp / "figures" / "retest.png", [r["name"] for r in rows],
                {"re-test p": [r["retest"]["p_value"] for r in rows]}, "p-value",
                "calibrated test with each candidate as the base model", (0, 1.05),
                line=report.alpha)
        md = ["# drift_jax mitigate", "", *[f"- {line.strip()}" for line in
                                              summary_lines(report)], "",
              "| model | production acc | base acc | forgetting (pt) | images seen | "
              "re-test p | still flagged |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            test = r["retest"] or {}
            md.append(f"| {r['name']} | {r['production_accuracy']:.3f} | "
                      f"{r['base_accuracy']:.3f} | {_points(r['forgetting_points'])} | "
                      f"{r['images_seen']} | {test.get('p_value', float('nan')):.3f} | "
                      f"{', '.join(test.get('still_flagged', [])) or '-'} |")
        atomic_write_bytes(tmp / "summary.md", ("\n".join(md) + "\n").encode())
        atomic_write_json(tmp / "report.json", report.to_json())
    return out
