"""The seven steps of docs/METHOD.md end to end, with a calibrated decision: `detect_drift`.

Base, production and M control models train as one stack and are inverted together; every
configured membership attack against the base model scores all gray data; the production
model's statistics are ranked among the controls' (`decision`); once that rejects, the classes
that moved are named (`localise`); the baselines run on the same splits and models.

Several seeds of one config run as one stack at every stage: S x (2 + M) models train and
invert as one program each, one inference call evaluates them all, the attacks target the S base
models at once (`membership.AttackContext`), and the tests and baselines are vectorised over
seeds.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import MutableMapping

import jax
import numpy as np
from scipy import special

from drift_jax import data as data_lib
from drift_jax import inversion, membership, runtime, stack, streams, validate
from drift_jax.config import to_dict
from drift_jax.data import Dataset
from drift_jax.detect import localise
from drift_jax.detect.baselines import run_baselines
from drift_jax.detect.config import (
    DetectConfig,
    recorded_statistics,
    training_key,
)
from drift_jax.detect.decision import score_attack, warn_if_never_rejecting
from drift_jax.detect.fit import invert_models, train_models
from drift_jax.detect.plan import SeedPlan, StackedData, attack_rows, plan_seed, with_holdout
from drift_jax.detect.results import Accuracy, DriftReport, Localisation, Partner
from drift_jax.detect.statistics import (
    GrayScores,
    answers_on_base_gray,
    attack_statistics,
    model_statistics,
)
from drift_jax.errors import DriftJaxError
from drift_jax.inversion import GrayData
from drift_jax.models import ModelSpec


def detect_drift(config: DetectConfig, base: Dataset | None = None,
                 production: Dataset | None = None, progress: bool = True) -> DriftReport:
    """Runs the seven steps for ``config.seed``; see the module docstring. ``base`` /
    ``production``: datasets to use instead of loading ``config.base`` / ``config.production``."""
    return detect_drift_seeds(config, [config.seed], base, production, progress)[0]


def cache_key(config: DetectConfig, seeds: list[int]) -> str:
    """What a trained stack depends on: `config.training_key` and the seeds."""
    return json.dumps({**training_key(config), "seeds": seeds}, sort_keys=True)


def detect_drift_seeds(config: DetectConfig, seeds, base: Dataset | None = None,
                       production: Dataset | None = None, progress: bool = True,
                       cache: MutableMapping | None = None) -> list[DriftReport]:
    """`detect_drift` for several seeds of one config as one stack. Each seed's keys, splits and
    data depend on that seed only, so its report is the one a single-seed run gives (to float
    rounding where learned attacks train batched). With a ``cache`` (a mapping, `cache_key` ->
    trained stack), a stack trained by an earlier call of the same training settings is reused
    (``timings["train_reused"]`` says so)."""
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise DriftJaxError(f"seeds must be distinct and non-empty, got {seeds}.")
    clock = runtime.StageClock()
    with clock("data"):
        base = base if base is not None else data_lib.load(config.base)
        pool, holdout_ix = with_holdout(config, base)
        spec = ModelSpec(config.arch, base.num_classes, base.image_shape)
        check_memory(config, len(seeds), spec, len(pool))
        plans = [plan_seed(dataclasses.replace(config, seed=s), pool, base.labels, holdout_ix,
                           production) for s in seeds]
        production_model = None
        if config.production_model:  # checked before any training
            production_model = load_production_model(config.production_model, spec)
        data = StackedData.build(pool, plans)
    warn_if_never_rejecting(config)  # every check passed: the run is about to train
    with clock("train"):
        key = cache_key(config, seeds) if cache is not None else None
        trained = cache.get(key) if cache is not None else None
        train_reused = int(trained is not None)
        if trained is None:
            trained = train_models(spec, config, data, plans, production_model, progress)
            if cache is not None:
                cache[key] = trained
    with clock("invert"):  # steps 3-4: gray data of every model of every seed, one program
        gray = invert_models(spec, config, trained, plans, base.images, progress)
    fields = _decide(spec, plans, data, trained, gray, list(pool.class_names), clock, progress)
    timings = {**clock.seconds, "total": sum(clock.seconds.values()),
               "seeds_sharing_train_and_invert": len(seeds), "train_reused": train_reused,
               "compiles": clock.compiles}
    group = plans[0].group_size
    return [DriftReport(**f, timings=timings, config=to_dict(plan.config),
                        class_names=list(pool.class_names), scenario=plan.scenario,
                        environment=runtime.environment(),
                        gray=gray.select(np.arange(g * group, (g + 1) * group)),
                        models=(spec, stack.member(trained, [g * group, g * group + 1])),
                        splits=run_splits(plan, data.production[g]))
            for g, (plan, f) in enumerate(zip(plans, fields))]


def load_production_model(path: str, spec: ModelSpec) -> dict:
    """The given production model: a checkpoint of one model of the data's architecture. A
    stack of several is refused rather than cut to its first member."""
    production_model = stack.load_stack(path, expect=spec)[1]
    members = stack.stack_size(production_model)
    if members != 1:
        raise DriftJaxError(f"production model {path} is a stack of {members} models, and a "
                            "production model is one; save the member you mean alone "
                            "(stack.save_stack with stack.member(variables, [i])), or train it "
                            "with `drift-jax train --models 1`.")
    return production_model


def run_splits(plan: SeedPlan, production_rows: np.ndarray) -> dict[str, np.ndarray]:
    """The seed's index arrays as a run folder stores them: the splits into the pool and each
    control's training rows [M, n] (rows past the pool are the production data's)."""
    out = plan.split.arrays()
    if plan.config.controls:
        out["controls"] = np.stack(plan.control_rows(production_rows))
    return out


def check_memory(config: DetectConfig, num_seeds: int, spec: ModelSpec, pool_size: int) -> None:
    """The run's largest allocations, estimated before any work: the inversion of every model,
    the training of every model it trains (the shadow models of the attacks that need them
    included, trained while the run's models are kept), and the per-attack permutation tests
    (base vs production gray data)."""
    models = num_seeds * (2 + config.controls)
    inversion.check_memory(spec, models, spec.num_classes, config.inversion)
    stack.check_training_memory(spec, models, config.train.batch_size, 1, "vmap", pool_size)
    shadow_attacks = [a for a in config.attacks if membership.ATTACKS[a].needs_shadows]
    if shadow_attacks:
        stack.check_training_memory(
            spec, num_seeds * config.num_shadows, config.train.batch_size, 1, "vmap", pool_size,
            held_models=models, what="shadow models",
            fix=f"lower num_shadows, or leave out {', '.join(shadow_attacks)} (the attacks that "
                "train shadow models)")
    samples = 2 * config.inversion.samples_per_class * spec.num_classes
    validate.check_memory(4.0 * num_seeds * config.permutations * samples, f"permutation tests of "
                          f"{config.permutations} permutations", "lower permutations")


def attack_context(spec: ModelSpec, plans: list[SeedPlan], data: StackedData, images,
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
            pools = np.stack([np.concatenate([p.split.reference, p.split.holdout])
                              for p in plans])
            shadows = membership.train_shadows(spec, data.images, data.labels, pools,
                                               config.num_shadows, config.train,
                                               streams.fold(keys, "shadows"), progress)
    return membership.AttackContext(spec, targets, images, data.labels, np.stack(members),
                                    np.stack(nonmembers), keys, shadows)


def _decide(spec: ModelSpec, plans: list[SeedPlan], data: StackedData, trained: dict,
            gray: GrayData, class_names: list[str], clock: runtime.StageClock,
            progress: bool) -> list[dict]:
    """Steps 5-7, localisation and the baselines for every seed at once; one dict of
    `DriftReport` fields per seed."""
    config = plans[0].config
    num_seeds, group = len(plans), plans[0].group_size
    images = jax.device_put(data.images)  # resident for every inference call below
    holdout = np.stack([p.split.holdout for p in plans])  # [S, n]
    with clock("evaluate"):  # every model on its seed's holdout: one inference call
        logits = stack.predict(spec, trained, images, np.repeat(holdout, group, axis=0))
        truth = np.repeat(data.labels[holdout], group, axis=0)
        accuracy = np.asarray(stack.accuracy_from_logits(logits, truth, spec.num_classes)[
            "accuracy"]).reshape(num_seeds, group)
    targets = stack.member(trained, np.arange(num_seeds) * group)  # the base models
    with clock("model_statistics"):
        on_base_gray = answers_on_base_gray(spec, trained, gray.images[::group], group)
        by_model = model_statistics(gray, on_base_gray)
    attacks = _attack_results(spec, plans, data, images, targets, gray, by_model, clock,
                              progress)
    with clock("baselines"):
        found = run_baselines(config, plans, data, images, holdout, logits, targets, spec)
    # Step 7. With controls, the calibrated test decides, and classes are named only when the
    # global test rejects (gatekeeping). Without controls (the original protocol) only the seed
    # rule is available.
    primary = [a[config.primary_attack] for a in attacks]
    if config.controls:
        is_drift = [bool(a.p_value <= config.alpha) for a in primary]
        flagged = [np.flatnonzero(a.per_class.p_value_corrected <= config.alpha) if d
                   else np.zeros(0, int) for a, d in zip(primary, is_drift)]
    else:
        is_drift = [a.seed_rule.is_drift for a in primary]
        flagged = [np.zeros(0, int) for _ in plans]
    with clock("localise"):
        places = _localise(spec, targets, gray, on_base_gray, flagged, class_names, config)
    return [{"is_drift": d, "p_value": a.p_value, "drifted_classes": named,
             "attacks": per_seed, "baselines": b, "localisation": where,
             "accuracy": Accuracy(float(acc[0]), float(acc[1]), acc[2:])}
            for d, a, per_seed, b, (where, named), acc
            in zip(is_drift, primary, attacks, found, places, accuracy)]


def _attack_results(spec, plans, data, images, targets, gray, by_model, clock,
                    progress) -> list[dict]:
    """Steps 5-6: every attack against the base models scores every model's gray data; per seed
    {attack: `AttackResult`}."""
    config = plans[0].config
    num_seeds, group = len(plans), plans[0].group_size
    context = attack_context(spec, plans, data, images, targets, progress, clock)
    c, samples = gray.images.shape[1:3]
    gray_images = gray.images.reshape(num_seeds, group * c * samples, *gray.images.shape[3:])
    gray_labels = gray.labels.reshape(num_seeds, -1)
    test_keys = jax.numpy.stack([p.keys["test"] for p in plans])
    names = recorded_statistics(config)
    attacks = [{} for _ in plans]
    for name in config.attacks:
        with clock(f"attack_{name}"):
            attack = membership.ATTACKS[name]().fit(dataclasses.replace(
                context, keys=streams.fold(context.keys, name)))
            scores = GrayScores.from_membership(attack.score(gray_images, gray_labels),
                                                attack.oriented_score,
                                                (num_seeds, group, c, samples))
            class_statistics = {**attack_statistics(scores, names),
                                **{k: v for k, v in by_model.items() if k in names}}
            for s, result in enumerate(score_attack(scores, class_statistics, config,
                                                    test_keys, name)):
                attacks[s][name] = result
    return attacks


def _localise(spec, targets, gray, on_base_gray, flagged, class_names,
              config) -> list[tuple[Localisation, list[str]]]:
    """Per seed, the localisation record and the named classes: the base model's answers on
    every model's gray data, every model's on the base model's, and the partner tests of the
    flagged classes (`localise.partner_tests`)."""
    num_seeds, group, c, samples = on_base_gray.shape[:4]
    images = gray.images.reshape(num_seeds * group * c * samples, *gray.images.shape[3:])
    answers = stack.predict(spec, targets, images,
                            np.arange(len(images)).reshape(num_seeds, -1))
    answers = special.softmax(answers.reshape(num_seeds, group, c, samples, -1), axis=-1)
    found = localise.partner_tests(
        dict(zip(localise.PARTNER_DIRECTIONS, (answers.argmax(-1), on_base_gray.argmax(-1)))),
        flagged, config.alpha, config.correction)
    out = []
    for ks, partners, read_by_base, read_base in zip(flagged, found, answers.mean(3),
                                                     on_base_gray.mean(3)):
        named = localise.destination_named(partners)
        by_name = {class_names[k]: Partner(
            None if f["destination"] is None else class_names[f["destination"]], f["direction"],
            named[k], {d: {class_names[j]: p for j, p in row.items()}
                       for d, row in f["p_values"].items()}) for k, f in partners.items()}
        drifted = [class_names[k] for k in (localise.named_classes(partners) if partners
                                            else ks)]
        out.append((Localisation([class_names[k] for k in ks], by_name, read_by_base,
                                 read_base), drifted))
    return out
