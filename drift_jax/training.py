"""`drift-jax train`: train a stack on one dataset's training part, evaluate on its holdout, and
write a run folder (resolved config, metrics, checkpoint)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax

from drift_jax import data as data_lib
from drift_jax import faults, runtime, stack, validate
from drift_jax.config import TrainRunConfig, to_dict
from drift_jax.data import Dataset
from drift_jax.files import atomic_folder, atomic_write_json
from drift_jax.models import ModelSpec


@dataclasses.dataclass
class TrainRun:
    spec: ModelSpec
    variables: dict
    metrics: dict


def run_training(config: TrainRunConfig, out: str | Path | None = None,
                 dataset: Dataset | None = None, progress: bool = True,
                 overwrite: bool = False) -> TrainRun:
    """Trains ``config.models`` members (seeds ``config.seed + m``) on the same training part.

    With ``out`` (checked before any work; a finished run there is replaced only with
    ``overwrite``, and never one of the config's inputs), writes ``config.json``,
    ``checkpoint/`` and ``metrics.json`` into a temporary sibling once training succeeded,
    which then replaces ``out`` whole: a failure at any point leaves ``out`` as it was.
    """
    if out is not None:
        out = validate.output_folder(out, overwrite, inputs=validate.config_inputs(config))
    t0 = time.perf_counter()
    dataset = dataset if dataset is not None else data_lib.load(config.data)
    train_ix, holdout_ix = data_lib.stratified_split(
        dataset.labels, [1 - config.holdout_fraction, config.holdout_fraction], config.seed,
        dataset.num_classes)
    spec = ModelSpec(config.arch, dataset.num_classes, dataset.image_shape)
    stack.check_stack_memory(spec, config.models)  # before the keys: they are as many
    key = jax.random.key(config.seed)
    init_key, train_key = jax.random.split(key)
    variables = stack.init_stack(spec, jax.random.split(init_key, config.models))
    load_seconds = time.perf_counter() - t0
    result = stack.train_stack(spec, variables, dataset.images, dataset.labels,
                               [train_ix] * config.models, config.train, train_key,
                               progress=progress)
    evaluation = stack.evaluate_stack(spec, result.variables, dataset.images[holdout_ix],
                                      dataset.labels[holdout_ix])
    examples = len(train_ix) * config.train.epochs * config.models
    metrics = {
        "data": dataset.summary(),
        "train_size": int(len(train_ix)),
        "holdout_size": int(len(holdout_ix)),
        "holdout_accuracy": evaluation["accuracy"],
        "holdout_per_class_accuracy": evaluation["per_class_accuracy"],
        "train_loss": result.history["loss"],
        "train_accuracy": result.history["accuracy"],
        "execution": dataclasses.asdict(result.execution),
        "mesh": result.mesh,
        "compiles_during_training": result.compiles,
        "seconds": {"load_and_init": load_seconds, "train": result.seconds},
        "train_images_per_second": examples / result.seconds,
        "environment": runtime.environment(),
    }
    if out is not None:
        with atomic_folder(out, overwrite) as tmp:
            atomic_write_json(tmp / "config.json", to_dict(config))
            stack.save_stack(tmp / "checkpoint", spec, result.variables,
                             {"data": dataset.name, "seed": config.seed})
            faults.point("train.checkpoint_saved")
            atomic_write_json(tmp / "metrics.json", metrics)
    return TrainRun(spec, result.variables, metrics)
