"""Model stacks: N models of one architecture as one pytree with a leading axis N.

A stack trains as one compiled program. Data sits on the device once; each member has its own
index array into it (its base half, resample, shadow IN-set, ...) and its own shuffling key, and
gathers its batches inside the compiled step. Steps are fused into `lax.scan` chunks; members run
batched (`vmap`) or one after another inside the step (`lax.map`), a per-backend choice made by
measurement (`EXECUTION_DEFAULTS`, `scripts/bench_train.py`) and recorded in every result. Members
are sharded over the mesh's ``models`` axis and batches over its ``data`` axis (`jax.shard_map`,
gradients summed with `psum`), so the same code runs on 1 or many devices with equal results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from drift_jax import devices as devices_lib
from drift_jax import faults, layers, runtime, validate
from drift_jax.config import TrainConfig
from drift_jax.devices import DATA, MODELS
from drift_jax.errors import DriftJaxError
from drift_jax.execution import ExecutionConfig, map_members, resolve_execution
from drift_jax.files import atomic_write_json
from drift_jax.models import ModelSpec

# ----------------------------------------------------------------------------- init


@functools.lru_cache(maxsize=32)
def _init_program(spec: ModelSpec):
    return jax.jit(jax.vmap(spec.init))


def check_stack_memory(spec: ModelSpec, num_members: int) -> None:
    """Refuses a stack whose variables would not fit, before anything of that size (keys
    included) is made."""
    validate.check_memory(model_bytes(spec) * num_members, f"a stack of {num_members} models",
                          "use fewer models (controls, shadows, seeds)")


def init_stack(spec: ModelSpec, keys: jax.Array) -> dict:
    """Variables of ``len(keys)`` independently initialised models, leaves [N, ...]."""
    check_stack_memory(spec, len(keys))
    return _init_program(spec)(keys)


@functools.lru_cache(maxsize=32)
def model_bytes(spec: ModelSpec) -> int:
    """Bytes of one model's variables."""
    shapes = jax.eval_shape(spec.init, jax.random.key(0))
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(shapes))


def step_bytes_per_image(spec: ModelSpec) -> int:
    """About the float32 activations and gradients one image needs in a SeedCNN-sized step
    (32 and 64 channels at full and half resolution, the input), forward and backward."""
    h, w = spec.image_shape[:2]
    return 4 * 3 * (h * w * 32 + (h // 2) * (w // 2) * 64 + int(np.prod(spec.image_shape)))


def check_training_memory(spec: ModelSpec, num_members: int, batch: int, steps: int,
                          member_mode: str, num_images: int, held_models: int = 0,
                          what: str = "models",
                          fix: str = "lower train.batch_size or the number of models") -> None:
    """Refuses, before allocating, a training run that would not fit: the stack with its Adam
    state and gradients, one epoch's schedule, the images, one step's activations (every
    member at once under vmap), and ``held_models`` trained earlier and kept meanwhile."""
    stepping = num_members if member_mode == "vmap" else 1
    nbytes = ((4 * num_members + held_models) * model_bytes(spec)
              + 17 * steps * batch * num_members + num_images * int(np.prod(spec.image_shape))
              + stepping * batch * step_bytes_per_image(spec))
    validate.check_memory(nbytes, f"training {num_members} {what} with batch {batch}", fix)


def per_member_keys(key: jax.Array, num_members: int) -> jax.Array:
    """[N] keys: ``fold_in(key, m)`` for one key, or ``key`` itself when it holds N keys."""
    if key.ndim == 0:
        return jax.vmap(lambda m: jax.random.fold_in(key, m))(jnp.arange(num_members))
    if key.shape != (num_members,):
        raise DriftJaxError(f"{key.shape[0]} keys for a stack of {num_members} members; pass one "
                            "key, or one per member.")
    return key


def stack_size(variables: Any) -> int:
    return int(jax.tree.leaves(variables)[0].shape[0])


def member(variables: Any, index) -> Any:
    """Members selected by ``index`` (an int, slice or index array) of a stack."""
    if isinstance(index, int | slice):
        return jax.tree.map(lambda x: x[index], variables)
    return _take_members(variables, jnp.asarray(index))


@jax.jit
def _take_members(variables: Any, index: jax.Array) -> Any:
    return jax.tree.map(lambda x: x[index], variables)


# ----------------------------------------------------------------------------- training


@flax.struct.dataclass
class StackState:
    variables: dict
    opt_state: Any


@dataclasses.dataclass
class TrainResult:
    """Trained variables (leaves [N, ...]) and what happened: per-epoch loss and accuracy per
    member, wall time, the resolved execution strategy and the mesh."""

    variables: dict
    history: dict
    seconds: float
    execution: ExecutionConfig
    mesh: dict
    compiles: int = 0  # XLA compilations during the epochs: 2 (schedule, chunk) or 0 if cached


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    if config.weight_decay:
        return optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
    return optax.adam(config.learning_rate)


def _pad_member_indices(member_indices, num_examples: int) -> tuple[np.ndarray, np.ndarray]:
    rows = [np.asarray(ix, np.int64).reshape(-1) for ix in member_indices]
    if not rows:
        raise DriftJaxError("member_indices is empty; pass one index array per member.")
    for m, ix in enumerate(rows):
        if ix.size == 0:
            raise DriftJaxError(f"member {m} has no training examples; give every member a "
                                "non-empty index array.")
        if ix.min() < 0 or ix.max() >= num_examples:
            raise DriftJaxError(f"member {m} indexes outside the data (0..{num_examples - 1}); "
                                f"found {ix.min()}..{ix.max()}.")
    sizes = np.array([ix.size for ix in rows], np.int32)
    padded = np.zeros((len(rows), sizes.max()), np.int32)
    for m, ix in enumerate(rows):
        padded[m, : ix.size] = ix
    return padded, sizes


def _augment(x: jax.Array, flip: jax.Array, shift: jax.Array, margin: int) -> jax.Array:
    """x: [B, H, W, C]; flip: [B] bool; shift: [B, 2] in 0..2*margin (pad-and-crop offsets)."""
    x = jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)
    if margin:
        h, w = x.shape[1:3]
        padded = jnp.pad(x, ((0, 0), (margin, margin), (margin, margin), (0, 0)), mode="reflect")
        x = jax.vmap(lambda im, s: jax.lax.dynamic_slice(im, (s[0], s[1], 0),
                                                         (h, w, im.shape[-1])))(padded, shift)
    return x


class _Schedule(flax.struct.PyTreeNode):
    """One epoch of batches for every member: [num_chunks, chunk, members, batch] arrays."""

    index: jax.Array
    weight: jax.Array
    flip: jax.Array
    shift: jax.Array


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Static shapes of one training run; with the spec, recipe and mesh it keys the programs."""

    batch: int
    padded_batch: int  # batch rounded up to a multiple of the data-axis size
    chunk: int  # steps per scan
    num_chunks: int  # scans per epoch
    has_bn: bool


@functools.lru_cache(maxsize=32)
def _train_programs(spec: ModelSpec, config: TrainConfig, execution: ExecutionConfig, mesh,
                    layout: _Layout):
    """The compiled epoch-schedule and train-chunk programs, built once per configuration so
    repeated runs of one shape (seeds, sweeps, benchmarks) reuse the compilation."""
    module = spec.build(bn_axis_name=DATA) if spec.arch == "resnet" else spec.build()
    tx = make_optimizer(config)
    margin = config.augment_crop
    batch, padded_batch = layout.batch, layout.padded_batch
    chunk, num_chunks = layout.chunk, layout.num_chunks

    def loss_fn(params, other, x, y, w):
        if layout.has_bn:
            logits, updates = module.apply({"params": params, **other}, x, train=True,
                                           mutable=["batch_stats"])
        else:
            logits, updates = module.apply({"params": params}, x, train=True), other
        if y.ndim == 2:  # target distributions (soft labels, e.g. distillation)
            ce = optax.softmax_cross_entropy(logits, y)
            y = jnp.argmax(y, -1)
        else:
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
        return jnp.sum(ce * w), (updates, jnp.sum(correct * w))

    def member_step(state, data_images, data_labels, ix, w, flip, shift):
        """One optimiser step of one member on its local batch shard."""
        x = data_images[ix].astype(jnp.float32) / 255.0
        if config.augment_flip or margin:
            x = _augment(x, flip, shift, margin)
        params = state.variables["params"]
        other = {k: v for k, v in state.variables.items() if k != "params"}
        (loss_sum, (other_new, correct)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, other, x, data_labels[ix], w)
        count = jax.lax.psum(jnp.sum(w), DATA)
        grads, loss_sum, correct = jax.lax.psum((grads, loss_sum, correct), DATA)
        grads = jax.tree.map(lambda g: g / jnp.maximum(count, 1.0), grads)
        updates, opt_state = tx.update(grads, state.opt_state, params)
        new = StackState({"params": optax.apply_updates(params, updates), **other_new}, opt_state)
        # A member whose subset is used up this epoch sits the step out (no Adam drift).
        new = jax.tree.map(lambda a, b: jnp.where(count > 0, a, b), new, state)
        return new, jnp.stack([loss_sum, correct, count])

    def train_chunk(state, data_images, data_labels, schedule, chunk_id):
        """Local shard: state [N_loc, ...]; schedule [num_chunks, chunk, N_loc, B_loc]."""
        part = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, chunk_id, 0, False),
                            schedule)

        def step(state, s):
            def one(st, ix, w, flip, shift):
                return member_step(st, data_images, data_labels, ix, w, flip, shift)

            return map_members(one, execution.member_mode, state, s.index, s.weight, s.flip,
                               s.shift)

        state, stats = jax.lax.scan(step, state, part)
        return state, stats.sum(0)  # [N_loc, 3]: loss sum, correct, count

    sched_spec = _Schedule(*(P(None, None, MODELS, DATA),) * 4)
    compiled_chunk = jax.jit(
        jax.shard_map(train_chunk, mesh=mesh,
                      in_specs=(P(MODELS), P(), P(), sched_spec, P()),
                      out_specs=(P(MODELS), P(MODELS)),
                      # Gradients are psum-ed explicitly above (pmap semantics).
                      check_vma=False),
        donate_argnums=(0,))

    def epoch_schedule(member_keys, index, sizes, epoch):
        def one(k, ix, n):
            k = jax.random.fold_in(k, epoch)
            k_perm, k_flip, k_shift = jax.random.split(k, 3)
            order = jnp.argsort(jnp.where(jnp.arange(ix.shape[0]) < n,
                                          jax.random.uniform(k_perm, ix.shape), 2.0))
            slot = jnp.arange(num_chunks * chunk * padded_batch).reshape(
                num_chunks * chunk, padded_batch)
            # Each step's batch: `batch` real slots, then padding for even device shards.
            pos = jnp.arange(num_chunks * chunk)[:, None] * batch + slot % padded_batch
            real = (slot % padded_batch < batch) & (pos < n)
            take = ix[order[pos % n]]
            flip = jax.random.bernoulli(k_flip, 0.5, take.shape) & config.augment_flip
            shift = jax.random.randint(k_shift, (*take.shape, 2), 0, 2 * margin + 1)
            shape = (num_chunks, chunk, padded_batch)
            return (take.reshape(shape), real.astype(jnp.float32).reshape(shape),
                    flip.reshape(shape), shift.reshape(*shape, 2))

        parts = jax.vmap(one)(member_keys, index, sizes)
        return _Schedule(*(jnp.moveaxis(p, 0, 2) for p in parts))

    compiled_schedule = jax.jit(epoch_schedule, out_shardings=_Schedule(
        *(devices_lib.sharding(mesh, None, None, MODELS, DATA),) * 4))
    opt_init = jax.jit(jax.vmap(tx.init))
    return compiled_schedule, compiled_chunk, opt_init


def train_stack(spec: ModelSpec, variables: dict, images: np.ndarray, labels: np.ndarray,
                member_indices, config: TrainConfig, key: jax.Array, *, progress: bool = True,
                mesh=None) -> TrainResult:
    """Trains every member of a stack on its own subset, with one recipe, as one program.

    Args:
      spec: the architecture (all members share it).
      variables: the stack's initial variables, leaves [N, ...] (`init_stack`).
      images: uint8 [num_examples, H, W, C]; moved to the device once, replicated.
      labels: int [num_examples], or float [num_examples, num_classes] target distributions
        (soft labels, e.g. a teacher's probabilities for distillation).
      member_indices: N index arrays into ``images`` (lengths may differ).
      config: the recipe; ``config.execution`` chooses how it runs.
      key: PRNG key, member m shuffling with ``fold_in(key, m)``; or one key per member [N],
        so that a member's run does not depend on its place in the stack.
      mesh: a ('models', 'data') mesh; default `devices.stack_mesh` over all devices.
    """
    chex.assert_rank(images, 4)
    chex.assert_type(images, np.uint8)
    labels = np.asarray(labels)
    soft = labels.ndim == 2
    chex.assert_shape(labels, (images.shape[0], spec.num_classes) if soft else (images.shape[0],))
    num_members = stack_size(variables)
    index, sizes = _pad_member_indices(member_indices, images.shape[0])
    if index.shape[0] != num_members:
        raise DriftJaxError(f"{index.shape[0]} index arrays for a stack of {num_members} members; "
                            "pass one per member.")
    if tuple(images.shape[1:]) != spec.image_shape:
        raise DriftJaxError(f"images have shape {images.shape[1:]}, the model expects "
                            f"{spec.image_shape}; use data of the model's shape.")
    execution = resolve_execution(config.execution)
    spec = dataclasses.replace(spec, conv_form=execution.conv_form, pool_form=execution.pool_form)
    loop = execution.member_mode == "loop"
    # 'loop' dispatches one member at a time, each over all devices (data parallel).
    mesh = mesh or devices_lib.stack_mesh(1 if loop else num_members)
    batch = config.batch_size
    steps = -(-int(sizes.max()) // batch)
    check_training_memory(spec, num_members, batch, steps, execution.member_mode, len(images))
    faults.point("stack.train_started")
    # Even chunks: at most scan_chunk steps each, and less than one chunk of padded steps.
    num_chunks = -(-steps // execution.scan_chunk)
    layout = _Layout(batch=batch, padded_batch=-(-batch // mesh.shape[DATA]) * mesh.shape[DATA],
                     chunk=-(-steps // num_chunks), num_chunks=num_chunks,
                     has_bn="batch_stats" in variables)
    # The programs do not depend on the epoch count: normalise it out of the cache key.
    compiled_schedule, compiled_chunk, opt_init = _train_programs(
        spec, dataclasses.replace(config, epochs=1), execution, mesh, layout)
    place = lambda *spec_: devices_lib.sharding(mesh, *spec_)
    # A copy: the chunks donate their state, and the caller's variables must outlive the run.
    state = jax.device_put(StackState(variables, opt_init(variables["params"])), place(MODELS),
                           may_alias=False)
    if loop:
        state = list(_split_members(state, num_members))
    data_images = jax.device_put(images, place())
    data_labels = jax.device_put(labels.astype(np.float32 if soft else np.int32), place())
    member_keys = per_member_keys(key, num_members)
    index_d, sizes_d = jnp.asarray(index), jnp.asarray(sizes)

    def run_chunk(state, schedule, c):
        """One chunk of steps for the whole stack; 'loop' dispatches member by member."""
        if not loop:
            return compiled_chunk(state, data_images, data_labels, schedule, c)
        stats = []
        for m, part in enumerate(schedule):
            state[m], member_stats = compiled_chunk(state[m], data_images, data_labels, part, c)
            stats.append(member_stats)
        return state, _concat_members(stats)

    history = {"loss": [], "accuracy": [], "epoch_seconds": []}
    start = time.perf_counter()
    with runtime.CompileCounter() as counter:
        bar = tqdm(total=config.epochs * num_chunks, desc=f"train {num_members}x{spec.arch}",
                   unit="chunk", disable=not progress, leave=False)
        for epoch in range(config.epochs):
            epoch_start = time.perf_counter()
            schedule = compiled_schedule(member_keys, index_d, sizes_d, epoch)
            if loop:
                schedule = _split_schedule(schedule, num_members)
            totals = []
            for c in range(num_chunks):
                state, stats = run_chunk(state, schedule, c)
                totals.append(stats)
                bar.update()
            per_chunk = np.asarray(devices_lib.to_host(totals))  # [chunks, N, 3]
            _check_finite(per_chunk[..., 0], epoch, layout.chunk)
            loss, correct, count = per_chunk.sum(0).T
            history["loss"].append((loss / np.maximum(count, 1)).tolist())
            history["accuracy"].append((correct / np.maximum(count, 1)).tolist())
            history["epoch_seconds"].append(time.perf_counter() - epoch_start)
            bar.set_postfix(loss=f"{np.mean(history['loss'][-1]):.3f}")
        bar.close()
        if loop:
            state = _concat_members(state)
        trained = jax.block_until_ready(state.variables)
        if jax.process_count() > 1:  # global arrays: give every process the whole stack
            trained = devices_lib.to_host(trained)
        elif mesh.size == 1:  # plain device arrays: later programs see one input layout
            trained = jax.device_put(trained, mesh.devices.flat[0])
        seconds = time.perf_counter() - start
    return TrainResult(trained, history, seconds, execution, devices_lib.describe(mesh),
                       counter.count)


@functools.partial(jax.jit, static_argnums=1)
def _split_members(tree, num_members: int):
    """A stacked pytree -> one pytree per member, each with a leading axis of 1."""
    return tuple(jax.tree.map(lambda a, m=m: a[m:m + 1], tree) for m in range(num_members))


@functools.partial(jax.jit, static_argnums=1)
def _split_schedule(schedule, num_members: int):
    """[chunks, chunk, M, B] schedule arrays -> M schedules with a member axis of 1."""
    return tuple(jax.tree.map(lambda a, m=m: a[:, :, m:m + 1], schedule)
                 for m in range(num_members))


@jax.jit
def _concat_members(trees):
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *trees)


def _check_finite(chunk_loss: np.ndarray, epoch: int, chunk: int) -> None:
    """chunk_loss [chunks, N]: the first non-finite one names its member and steps."""
    bad = ~np.isfinite(chunk_loss)
    if bad.any():
        c, m = np.argwhere(bad)[0]
        raise DriftJaxError(
            f"training diverged: member {m} has a non-finite loss in epoch {epoch}, steps "
            f"{c * chunk}..{(c + 1) * chunk - 1} of the epoch; lower train.learning_rate (the "
            "data and labels were already checked).")


# ----------------------------------------------------------------------------- inference

PREDICT_BATCH = 512  # images per member per step of the inference program


def predict_stack(spec: ModelSpec, variables: dict, images: jax.Array,
                  member_mode: str = "vmap") -> jax.Array:
    """Logits of every member on the same float images [B, H, W, C] in [0, 1] -> [N, B, C].

    The traceable building block; `predict` is the compiled, batched entry point."""
    module = spec.build()
    return map_members(lambda v: module.apply(v, images, train=False), member_mode, variables)


def _as_model_input(x: jax.Array) -> jax.Array:
    """uint8 0..255 -> float32 [0, 1]; float images pass through as float32."""
    return x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)


@functools.lru_cache(maxsize=32)
def _predict_program(spec: ModelSpec, member_mode: str, per_member: bool, flip: bool):
    """One compiled inference program per (spec, execution, index kind): images and index
    arrays are arguments, so every call of one shape reuses it."""
    module = spec.build()

    def run(variables, images, index):
        # index: [N or 1, batches, B] -> logits [N, batches, B, C]
        def one_batch(ix):  # ix: [N or 1, B]
            def member_logits(v, x):
                x = _as_model_input(x)
                return module.apply(v, x[:, :, ::-1] if flip else x, train=False)

            if per_member:
                return map_members(lambda v, i: member_logits(v, images[i]), member_mode,
                                   variables, ix)
            x = images[ix[0]]
            return map_members(lambda v: member_logits(v, x), member_mode, variables)

        out = jax.lax.map(one_batch, jnp.moveaxis(index, 1, 0))  # [batches, N, B, C]
        return jnp.moveaxis(out, 0, 1)

    return jax.jit(run)


def predict(spec: ModelSpec, variables: dict, images, index=None, *, flip: bool = False,
            batch_size: int = PREDICT_BATCH, member_mode: str | None = None) -> np.ndarray:
    """Logits of every member of a stack: the one batched-inference path of the package.

    Args:
      spec: the stack's architecture.
      variables: leaves [N, ...].
      images: [P, H, W, ch], uint8 0..255 or float in [0, 1]; a device array stays on device
        (pass one array to many calls to keep the data resident).
      index: None (every member sees all P images), int [n] (every member sees images[index])
        or int [N, n] (member m sees images[index[m]]: its own holdout, gray data, ...).
      flip: mirror the images horizontally first (LiRA's augmentation).
      batch_size: images per member per step; the last batch is padded, so each shape
        compiles once.
    Returns:
      float32 logits [N, n, C].
    """
    num_members = stack_size(variables)
    if index is None:
        index = np.arange(images.shape[0])
    index = np.asarray(index, np.int32)
    per_member = index.ndim == 2
    if per_member and index.shape[0] != num_members:
        raise DriftJaxError(f"predict: {index.shape[0]} index rows for a stack of {num_members} "
                            "members; pass one row per member, or one shared [n] index.")
    rows = index if per_member else index[None]
    n = rows.shape[1]
    if n == 0:
        return np.zeros((num_members, 0, spec.num_classes), np.float32)
    batch = min(batch_size, n)
    batches = -(-n // batch)
    padded = np.concatenate([rows, np.repeat(rows[:, :1], batches * batch - n, 1)], 1)
    mode = member_mode or resolve_execution(ExecutionConfig()).member_mode
    program = _predict_program(spec, mode, per_member, flip)
    out = program(variables, images, padded.reshape(len(rows), batches, batch))
    return np.asarray(out).reshape(num_members, batches * batch, -1)[:, :n]


def evaluate_stack(spec: ModelSpec, variables: dict, images, labels: np.ndarray,
                   index=None, batch_size: int = PREDICT_BATCH,
                   member_mode: str | None = None) -> dict:
    """Accuracy [N] and per-class accuracy [N, C] of every member, through `predict`.

    images: [P, H, W, C] (uint8 or float in [0, 1]); labels int [P]; ``index`` as in `predict`
    (None: all images; [N, n]: each member its own evaluation set).
    """
    labels = np.asarray(labels)
    chex.assert_shape(labels, (images.shape[0],))
    index = np.arange(len(labels)) if index is None else np.asarray(index)
    logits = predict(spec, variables, images, index, batch_size=batch_size,
                     member_mode=member_mode)
    truth = np.broadcast_to(labels[index], logits.shape[:2])
    return accuracy_from_logits(logits, truth, spec.num_classes)


def accuracy_from_logits(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """logits [N, n, C], labels [N, n] -> {"accuracy": [N], "per_class_accuracy": [N, C]}."""
    hit = logits.argmax(-1) == labels
    onehot = labels[..., None] == np.arange(num_classes)
    hits = (hit[..., None] & onehot).sum(1)
    counts = onehot.sum(1)
    return {"accuracy": hit.mean(1).tolist(),
            "per_class_accuracy": (hits / np.maximum(counts, 1)).tolist()}


# ----------------------------------------------------------------------------- checkpoints


STACK_FORMAT = "drift_jax.stack/1"


class _DropRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


def _is_closed_loop_report(unraisable) -> bool:
    return issubclass(unraisable.exc_type, RuntimeError) and \
        "Event loop is closed" in str(unraisable.exc_value)


def _os_error_code(error: BaseException) -> int | None:
    """The operating-system error under an orbax/tensorstore failure (it names the code in
    its text: ``[os_error_code='28']``), or None."""
    while error is not None:
        found = re.search(r"os_error_code='?(\d+)", str(error))
        if found:
            return int(found.group(1))
        if "No space left on device" in str(error):
            return errno.ENOSPC
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def _orbax_write_errors(directory: Path):
    """A failed orbax write (a full disk, a permission) becomes one OSError naming the
    checkpoint folder. Orbax also reports a failure of its background threads as absl ERROR
    records with tracebacks, and each of its writes still in flight when its event loop closed
    sends an "Event loop is closed" error to `sys.unraisablehook` as it ends: both are held back,
    since the failure itself is raised here, once."""
    absl_logger, quiet = logging.getLogger("absl"), _DropRecords()
    absl_logger.addFilter(quiet)
    previous, late = sys.unraisablehook, []

    def hook(unraisable):
        if _is_closed_loop_report(unraisable):
            late.append(time.monotonic())
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    except OSError:
        _let_writes_in_flight_end(late)
        raise
    except Exception as e:
        _let_writes_in_flight_end(late)
        code = _os_error_code(e)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(directory)) from e
    finally:
        absl_logger.removeFilter(quiet)
        sys.unraisablehook = previous


def _let_writes_in_flight_end(late: list[float], quiet_for: float = 0.2,
                              at_most: float = 2.0) -> None:
    """After a failed save, waits until orbax's writes still in flight have reported their end
    (none for ``quiet_for`` seconds, ``at_most`` in all), so that none reports after the error."""
    start = time.monotonic()
    while time.monotonic() - start < at_most and \
            time.monotonic() - max(late, default=start) < quiet_for:
        time.sleep(0.02)


def save_stack(directory: str | Path, spec: ModelSpec, variables: dict,
               metadata: dict | None = None) -> Path:
    """Saves a stack with orbax and its `ModelSpec` as JSON, atomically, also over an existing
    checkpoint: the arrays go to a new ``state-<id>/`` folder (orbax writes it under a temporary
    name and renames it), then ``stack.json``, which names the state folder, is replaced in one
    rename, then older state folders are removed. A kill at any moment leaves either the old or
    the new checkpoint, whole."""
    import shutil
    import uuid

    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    state_name = f"state-{uuid.uuid4().hex[:12]}"
    with _orbax_write_errors(directory), ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / state_name, jax.device_get(variables))
        ckptr.wait_until_finished()
    faults.point("save_stack.state_written")
    atomic_write_json(directory / "stack.json", {
        "format": STACK_FORMAT, "spec": spec.to_dict(), "num_members": stack_size(variables),
        "state": state_name, "metadata": metadata or {}})
    faults.point("save_stack.metadata_written")
    for old in directory.iterdir():
        if old.name != state_name and (old.name == "state" or old.name.startswith("state-")):
            shutil.rmtree(old, ignore_errors=True)
    return directory


def load_stack(directory: str | Path, expect: ModelSpec | None = None) -> tuple[ModelSpec, dict,
                                                                                dict]:
    """Restores ``(spec, variables, metadata)``; with ``expect``, refuses another architecture."""

    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    meta_path = directory / "stack.json"
    if not meta_path.exists():
        raise DriftJaxError(f"{directory} is not a drift_jax checkpoint (no stack.json); pass the "
                            "folder `drift-jax train --out` wrote its checkpoint to.")
    fix = "the checkpoint is damaged: save or train it again."
    meta = validate.read_json(meta_path, {"format": str, "spec": dict, "num_members": int,
                                          "state": str, "metadata": dict},
                              "checkpoint file", fix, optional=("state",))
    if meta["format"] != STACK_FORMAT or meta["num_members"] < 1:
        raise DriftJaxError(f"checkpoint file {meta_path} has format {meta['format']!r} and "
                            f"{meta['num_members']} members, expected {STACK_FORMAT!r} and >= 1; "
                            f"{fix}")
    spec = _spec_from_json(meta["spec"], meta_path, fix)
    if expect is not None and (spec.arch, spec.num_classes, spec.image_shape) != (
            expect.arch, expect.num_classes, expect.image_shape):
        raise DriftJaxError(
            f"checkpoint {directory} holds {spec.arch} for {spec.num_classes} classes on "
            f"{spec.image_shape} images, expected {expect.arch} for {expect.num_classes} classes "
            f"on {expect.image_shape}; pass a checkpoint of the matching architecture.")
    abstract = jax.eval_shape(lambda: init_stack(
        spec, jax.random.split(jax.random.key(0), meta["num_members"])))
    state = directory / meta.get("state", "state")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            variables = ckptr.restore(state, abstract)
    except Exception as e:  # orbax raises many kinds; all mean the same thing to the user
        raise DriftJaxError(f"checkpoint {directory}: cannot restore the arrays in {state.name}/ "
                            f"as the {spec.arch} of its stack.json ({type(e).__name__}: "
                            f"{str(e)[:200]}); {fix}") from e
    mismatch = _first_shape_mismatch(abstract, variables)
    if mismatch:  # orbax restores the stored shapes whatever stack.json says
        raise DriftJaxError(f"checkpoint {directory}: cannot restore the arrays in {state.name}/ "
                            f"as the {spec.arch} of its stack.json ({mismatch}; stack.json and "
                            f"the arrays disagree on the image shape, classes or members); {fix}")
    return spec, variables, meta["metadata"]


def _first_shape_mismatch(expected, restored) -> str | None:
    """The first array whose restored shape is not the one the spec implies, in words."""
    for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(expected),
                                 jax.tree.leaves(restored)):
        if tuple(want.shape) != tuple(got.shape):
            return (f"{jax.tree_util.keystr(path)} has shape {tuple(got.shape)}, expected "
                    f"{tuple(want.shape)}")
    return None


def _spec_from_json(data: dict, path: Path, fix: str) -> ModelSpec:
    """A `ModelSpec` from a checkpoint's JSON, every field checked."""
    fields = {f.name for f in dataclasses.fields(ModelSpec)}
    shape = data.get("image_shape")
    if (set(data) - fields or not {"arch", "num_classes", "image_shape"} <= set(data)
            or not isinstance(data["num_classes"], int) or data["num_classes"] < 2
            or not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(s, int) and s > 0 for s in shape)
            or data.get("conv_form", "canonical") not in layers.CONV_FORMS
            or data.get("pool_form", "reshape") not in layers.POOL_FORMS):
        raise DriftJaxError(f"checkpoint file {path} has an invalid spec {data!r}; {fix}")
    try:
        return ModelSpec(**data)
    except DriftJaxError as e:
        raise DriftJaxError(f"checkpoint file {path}: {e} {fix}") from e
