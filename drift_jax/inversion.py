"""Model inversion of a whole stack into gray data (docs/METHOD.md, "Model inversion").

Two methods, one compiled program each, batched over models x classes x samples:

* **MIFace parity** (Fredrikson et al. 2015, as IBM ART's ``MIFace`` runs it): gradient ascent on
  the target's softmax probability (or raw logit), step 0.1, no momentum, clip to [0, 1] after
  every step, a fixed ``max_iter``. ``early_stop='art'`` reproduces ART's mask exactly (batch size
  1): with ``cost = 1 - output[target]``, a sample stays active while
  ``cost <= threshold or cost >= max(last window costs)`` (an unfilled window counts as +inf) and
  is dropped for good the first time it is not, so a sample under 1 % confidence after its first
  step stays (nearly) black. ``early_stop='paper'`` is the paper's rule done right: stop when
  ``cost <= threshold`` or the cost has not improved on the max of the last ``window`` costs.
* **Regularised** (DeepInversion-style, Yin et al. 2020, written from the paper): random-normal
  init; Adam with warm-up and cosine decay; cross-entropy to the target + TV-L2 + input L2 +
  matching of BatchNorm batch statistics to the running ones (BN models); a random roll (jitter)
  and flip each step; the best iterate per sample is kept.

Shapes: a stack of M models inverted for classes [C] with S samples each gives images
[M, C, S, H, W, ch] in [0, 1]. Within a model, classes x samples form one batch (the same weights,
a plain batched convolution); models run through `execution.map_members` (vmap or one after another,
the backend's measured default) and iterations through `lax.scan` chunks, with no host round trip
of the images between chunks.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import time
import warnings
import zipfile
from pathlib import Path
from typing import Literal

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from drift_jax import runtime, validate
from drift_jax.errors import DriftJaxError
from drift_jax.execution import ExecutionConfig, map_members, resolve_execution
from drift_jax.files import atomic_write_bytes
from drift_jax.models import BN_MOMENTUM, ModelSpec
from drift_jax.stack import per_member_keys, predict, stack_size, step_bytes_per_image
from drift_jax.validate import bounded, check_fields


@dataclasses.dataclass(frozen=True)
class MIFaceConfig:
    """ART ``MIFace`` defaults: zeros init, 10,000 iterations, step 0.1, window 100."""

    max_iter: int = bounded(10_000, ge=1)
    learning_rate: float = bounded(0.1, gt=0)
    init: Literal["zeros", "grey", "uniform", "mean"] = "zeros"
    objective: Literal["probability", "logit"] = "probability"
    early_stop: Literal["none", "art", "paper"] = "none"
    # cost threshold; None: 0.99 for 'art' (ART), 0.01 'paper'
    threshold: float | None = bounded(None, ge=0, le=1)
    window: int = bounded(100, ge=1)

    def __post_init__(self):
        check_fields(self)


@dataclasses.dataclass(frozen=True)
class RegularizedConfig:
    """CIFAR-scale starting points (docs/METHOD.md, "Regularised inversion")."""

    steps: int = bounded(2000, ge=1)
    learning_rate: float = bounded(0.05, gt=0)
    warmup_steps: int = bounded(100, ge=0)
    tv_l2: float = bounded(1e-3, ge=0)
    input_l2: float = bounded(1e-4, ge=0)
    bn_weight: float = bounded(10.0, ge=0)
    jitter: int = bounded(2, ge=0)
    flip: bool = True
    init_std: float = bounded(0.2, ge=0)

    def __post_init__(self):
        check_fields(self)


@dataclasses.dataclass(frozen=True)
class InversionConfig:
    method: Literal["miface", "regularized"] = "miface"
    samples_per_class: int = bounded(32, ge=1)
    miface: MIFaceConfig = dataclasses.field(default_factory=MIFaceConfig)
    regularized: RegularizedConfig = dataclasses.field(default_factory=RegularizedConfig)
    execution: ExecutionConfig = dataclasses.field(default_factory=ExecutionConfig)

    def __post_init__(self):
        check_fields(self)

    @property
    def iterations(self) -> int:
        return self.miface.max_iter if self.method == "miface" else self.regularized.steps


@dataclasses.dataclass
class GrayData:
    """Images [M, C, S, H, W, ch] in [0, 1] inverted for ``classes`` [C]; ``confidence``
    [M, C, S] is each image's final softmax probability of its target under the model that made
    it; ``trace`` [M, chunks] the mean objective per chunk; ``active_steps`` [M, C, S] how many
    update steps each image received (early stopping)."""

    images: np.ndarray
    classes: np.ndarray
    confidence: np.ndarray
    trace: np.ndarray
    active_steps: np.ndarray
    seconds: float = 0.0
    compiles: int = 0

    @property
    def labels(self) -> np.ndarray:
        """Target label of every image, [M, C, S]."""
        m, c, s = self.images.shape[:3]
        return np.broadcast_to(self.classes[None, :, None], (m, c, s)).astype(np.int32)

    def select(self, members) -> GrayData:
        """The gray data of some members (an index array or slice over M)."""
        return dataclasses.replace(
            self, images=self.images[members], confidence=self.confidence[members],
            trace=self.trace[members], active_steps=self.active_steps[members])

    def save(self, path: str | Path) -> Path:
        """Atomic .npz, no pickle."""
        buf = io.BytesIO()
        np.savez(buf, images=self.images, classes=self.classes, confidence=self.confidence,
                 trace=self.trace, active_steps=self.active_steps)
        return atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> GrayData:
        """Reads and checks a gray.npz (keys, ranks and matching shapes)."""
        if not Path(path).exists():
            raise DriftJaxError(f"gray data file {path} does not exist.")
        keys = ("images", "classes", "confidence", "trace", "active_steps")
        try:
            with np.load(path, allow_pickle=False) as z:
                gray = cls(**{k: z[k] for k in keys})
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise DriftJaxError(f"gray data file {path} is truncated or not ours ({e}); "
                                "run the inversion again.") from e
        m, c, s = gray.images.shape[:3] if gray.images.ndim == 6 else (0, 0, 0)
        if (gray.images.ndim != 6 or gray.classes.shape != (c,)
                or gray.confidence.shape != (m, c, s) or gray.active_steps.shape != (m, c, s)
                or gray.trace.ndim != 2 or gray.trace.shape[0] != m):
            raise DriftJaxError(f"gray data file {path} has inconsistent shapes (images "
                                f"{gray.images.shape}, classes {gray.classes.shape}); run the "
                                "inversion again.")
        return gray


def _cost_threshold(cfg: MIFaceConfig) -> float:
    if cfg.threshold is not None:
        return cfg.threshold
    return 0.99 if cfg.early_stop == "art" else 0.01


def _still_active(cost, window, threshold, early_stop):
    """ART's mask, or its negation (the paper's stopping rule)."""
    keep_art = (cost <= threshold) | (cost >= window.max(axis=-1))
    return keep_art if early_stop == "art" else ~keep_art


# ----------------------------------------------------------------------------- MIFace


def _miface_step(module, cfg: MIFaceConfig, targets, variables, state, it, n_iter):
    """One ART MIFace iteration for one model's batch [K, H, W, ch]."""
    x, active, window, steps = state
    threshold = _cost_threshold(cfg)

    def objective(x):
        out = module.apply(variables, x, train=False)
        if cfg.objective == "probability":
            out = jax.nn.softmax(out)
        picked = jnp.take_along_axis(out, targets[:, None], 1)[:, 0]
        return picked.sum(), picked

    (_, picked), grad = jax.value_and_grad(objective, has_aux=True)(x)
    cost = 1.0 - picked  # the cost of x_it, i.e. ART's cost after update it - 1
    if cfg.early_stop != "none":
        decide = (it > 0) & active
        active = jnp.where(decide, _still_active(cost, window, threshold, cfg.early_stop), active)
        slot = jnp.maximum(it - 1, 0) % cfg.window
        window = jnp.where(it > 0, window.at[:, slot].set(cost), window)
    live = active & (it < n_iter)
    x_new = jnp.clip(x + cfg.learning_rate * grad, 0.0, 1.0)
    x = jnp.where(live[:, None, None, None], x_new, x)
    return (x, active, window, steps + live), jnp.mean(picked)


def _miface_init(cfg: MIFaceConfig, shape, key, mean_image):
    if cfg.init == "zeros":
        return jnp.zeros(shape)
    if cfg.init == "grey":
        return jnp.full(shape, 0.5)
    if cfg.init == "uniform":
        return jax.random.uniform(key, shape)
    if mean_image is None:
        raise DriftJaxError("miface.init='mean' needs the dataset's mean image: pass "
                            "mean_image=images.mean(0) / 255.")
    return jnp.broadcast_to(jnp.asarray(mean_image, jnp.float32), shape)


# ----------------------------------------------------------------------------- regularised


def tv_l2(x: jax.Array) -> jax.Array:
    """Squared total variation per image, x: [K, H, W, ch] -> [K]."""
    dh = jnp.diff(x, axis=1) ** 2
    dw = jnp.diff(x, axis=2) ** 2
    return dh.sum((1, 2, 3)) + dw.sum((1, 2, 3))


def _batch_statistics_loss(module, variables, x):
    """Logits and sum over BN layers of ||mu_batch - mu_run|| + ||var_batch - var_run||.

    A train-mode pass returns the updated running statistics r' = m r + (1 - m) b, from which the
    batch statistics b = (r' - m r) / (1 - m) follow exactly and differentiably.
    """
    logits, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
    old = jax.tree.leaves(variables["batch_stats"])
    new = jax.tree.leaves(updates["batch_stats"])
    loss = 0.0
    # Leaves come in (mean, var) order per layer; both terms are L2 norms of the difference.
    for running, updated in zip(old, new):
        batch = (updated - BN_MOMENTUM * running) / (1 - BN_MOMENTUM)
        loss = loss + jnp.linalg.norm(batch - running)
    return logits, loss


def _regularized_step(module, cfg: RegularizedConfig, tx, has_bn, targets, variables, state, it,
                      n_iter, key):
    x, opt_state, best_x, best_loss, steps = state
    k_roll, k_flip = jax.random.split(jax.random.fold_in(key, it))
    shift = jax.random.randint(k_roll, (2,), -cfg.jitter, cfg.jitter + 1)
    flip = jax.random.bernoulli(k_flip) & cfg.flip

    def loss_fn(x):
        xa = jnp.roll(x, (shift[0], shift[1]), axis=(1, 2))
        xa = jnp.where(flip, xa[:, :, ::-1, :], xa)
        if has_bn:
            logits, bn_loss = _batch_statistics_loss(module, variables, xa)
        else:
            logits, bn_loss = module.apply(variables, xa, train=False), 0.0
        per_image = (optax.softmax_cross_entropy_with_integer_labels(logits, targets)
                     + cfg.tv_l2 * tv_l2(x) + cfg.input_l2 * jnp.sum(x ** 2, (1, 2, 3)))
        return per_image.mean() + cfg.bn_weight * bn_loss, per_image

    (loss, per_image), grad = jax.value_and_grad(loss_fn, has_aux=True)(x)
    improved = per_image < best_loss
    best_x = jnp.where(improved[:, None, None, None], x, best_x)
    best_loss = jnp.where(improved, per_image, best_loss)
    updates, new_opt = tx.update(grad, opt_state, x)
    live = it < n_iter
    x = jnp.where(live, jnp.clip(optax.apply_updates(x, updates), 0.0, 1.0), x)
    opt_state = jax.tree.map(lambda a, b: jnp.where(live, a, b), new_opt, opt_state)
    return (x, opt_state, best_x, best_loss, steps + live), loss


# ----------------------------------------------------------------------------- driver


@functools.lru_cache(maxsize=16)
def _programs(spec: ModelSpec, config: InversionConfig, member_mode: str, chunk: int,
              num_images: int, has_bn: bool):
    module = spec.build()
    reg = config.regularized
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, reg.learning_rate, min(reg.warmup_steps, max(reg.steps - 1, 1)), max(reg.steps, 2))
    tx = optax.adam(schedule)

    def step(variables, state, targets, it, n_iter, key):
        if config.method == "miface":
            return _miface_step(module, config.miface, targets, variables, state, it, n_iter)
        return _regularized_step(module, reg, tx, has_bn, targets, variables, state, it, n_iter,
                                 key)

    @functools.partial(jax.jit, donate_argnums=(1,))
    def run_chunk(variables, state, targets, start, n_iter, keys):
        def body(state, i):
            def one(v, s, k):
                return step(v, s, targets, start + i, n_iter, k)

            return map_members(one, member_mode, variables, state, keys)

        state, trace = jax.lax.scan(body, state, jnp.arange(chunk))
        return state, trace.mean(0)

    @jax.jit
    def init_state(variables, x0):
        n = jax.tree.leaves(variables)[0].shape[0]
        if config.method == "miface":
            w = config.miface.window
            return (x0, jnp.ones((n, num_images), bool), jnp.full((n, num_images, w), jnp.inf),
                    jnp.zeros((n, num_images), jnp.int32))
        return (x0, jax.vmap(tx.init)(x0), x0, jnp.full((n, num_images), jnp.inf),
                jnp.zeros((n, num_images), jnp.int32))

    def target_probability(v, x, targets):
        p = jax.nn.softmax(module.apply(v, x, train=False))
        return jnp.take_along_axis(p, targets[:, None], 1)[:, 0]

    @jax.jit
    def confidence(variables, x, targets):
        return map_members(lambda v, xm: target_probability(v, xm, targets), member_mode,
                           variables, x)

    @jax.jit
    def gradient_norm(variables, x, targets):
        def one(v, xm):
            g = jax.grad(lambda z: target_probability(v, z, targets).sum())(xm)
            return jnp.linalg.norm(g.reshape(xm.shape[0], -1), axis=1)

        return map_members(one, member_mode, variables, x)

    return run_chunk, init_state, confidence, gradient_norm


def check_memory(spec: ModelSpec, num_models: int, num_classes: int,
                 config: InversionConfig) -> None:
    """Refuses, before allocating, an inversion whose state would not fit: images and optimiser
    state for every model x class x sample, plus one step's activations and gradients (all
    models at once under vmap, one model at a time under map)."""
    pixels = int(np.prod(spec.image_shape))
    images = num_models * num_classes * config.samples_per_class
    per_image_state = pixels * (3 if config.method == "miface" else 6) + (
        config.miface.window if config.method == "miface" else 0)
    execution = resolve_execution(config.execution)
    stepping = images if execution.member_mode == "vmap" else images // max(num_models, 1)
    nbytes = 4 * images * per_image_state + stepping * step_bytes_per_image(spec)
    validate.check_memory(nbytes, f"inverting {num_models} models x {num_classes} classes x "
                          f"{config.samples_per_class} samples",
                          "lower inversion.samples_per_class or the number of models")


def invert(spec: ModelSpec, variables: dict, classes, config: InversionConfig, key: jax.Array,
           *, mean_image: np.ndarray | None = None, progress: bool = True) -> GrayData:
    """Inverts every member of a stack for every class in ``classes``.

    Args:
      spec: the stack's architecture.
      variables: stack variables, leaves [M, ...].
      classes: class indices to invert, [C].
      config: method and its settings; ``samples_per_class`` images per class and model.
      key: PRNG key for random inits and the regularised mode's jitter (fixed key, same images);
        or one key per member [M], so that a member's images do not depend on the stack.
      mean_image: float [H, W, ch] in [0, 1], for ``miface.init='mean'``.
    Returns:
      `GrayData` with images [M, C, S, H, W, ch].
    """
    classes = np.asarray(classes, np.int32).reshape(-1)
    if classes.size == 0:
        raise DriftJaxError("invert: no classes given; pass e.g. classes=range(num_classes).")
    if classes.min() < 0 or classes.max() >= spec.num_classes:
        raise DriftJaxError(f"invert: classes must lie in 0..{spec.num_classes - 1}, got "
                            f"{classes.min()}..{classes.max()}.")
    check_memory(spec, stack_size(variables), classes.size, config)
    execution = resolve_execution(config.execution)
    spec = dataclasses.replace(spec, conv_form=execution.conv_form, pool_form=execution.pool_form)
    m, c, s = stack_size(variables), classes.size, config.samples_per_class
    k = c * s
    shape = (m, k, *spec.image_shape)
    targets = jnp.asarray(np.repeat(classes, s))
    n_iter = config.iterations
    num_chunks = -(-n_iter // execution.scan_chunk)
    chunk = -(-n_iter // num_chunks)
    has_bn = "batch_stats" in variables
    run_chunk, init_state, confidence, gradient_norm = _programs(
        spec, config, execution.member_mode, chunk, k, has_bn)
    keys = per_member_keys(key, m)
    init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    if config.method == "miface":
        x0 = jax.vmap(lambda k: _miface_init(config.miface, shape[1:], k, mean_image))(init_keys)
    else:
        x0 = jnp.clip(0.5 + config.regularized.init_std * jax.vmap(
            lambda k: jax.random.normal(k, shape[1:]))(init_keys), 0.0, 1.0)
    grad_norm = gradient_norm(variables, x0, targets)
    dead = np.argwhere(np.asarray(grad_norm).reshape(m, c, s).max(-1) == 0)
    if dead.size:
        pairs = ", ".join(f"model {a} class {classes[b]}" for a, b in dead[:8])
        warnings.warn(f"invert: the initial images have zero gradient for {pairs}: they cannot "
                      "move from this init; try miface.init='grey' or 'uniform'.", stacklevel=2)
    member_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    state = init_state(variables, x0)
    stops_early = config.method == "miface" and config.miface.early_stop != "none"
    traces = []
    start = time.perf_counter()
    with runtime.CompileCounter() as counter:
        for i in tqdm(range(num_chunks), desc=f"invert {m}x{c}x{s} ({config.method})",
                      unit="chunk", disable=not progress, leave=False):
            state, trace = run_chunk(variables, state, targets, i * chunk, n_iter, member_keys)
            traces.append(trace)
            if stops_early and not bool(jnp.any(state[1])):
                break  # every image of the stack has stopped: further steps change nothing
        images = state[2] if config.method == "regularized" else state[0]
        conf = confidence(variables, images, targets)
        images, conf = jax.device_get((images, conf))
    seconds = time.perf_counter() - start
    steps = np.asarray(state[-1])
    trace = np.stack([np.asarray(t) for t in traces], 1)  # [M, chunks]
    if not np.isfinite(images).all() or not np.isfinite(trace).all():
        bad = np.argwhere(~np.isfinite(images.reshape(m, k, -1)).all(-1))
        model = bad[0][0] if bad.size else np.argwhere(~np.isfinite(trace))[0][0]
        where = f", class {classes[bad[0][1] // s]}" if bad.size else ""
        first = int(np.argmax(~np.isfinite(trace[model]))) if not np.isfinite(
            trace[model]).all() else num_chunks - 1
        raise DriftJaxError(
            f"inversion diverged: model {model}{where} went non-finite in iterations "
            f"{first * chunk}..{(first + 1) * chunk - 1}; lower the learning rate "
            f"({config.method}.learning_rate). No scores were computed from it.")
    chex.assert_shape(images, shape)
    return GrayData(images=np.asarray(images).reshape(m, c, s, *spec.image_shape),
                    classes=classes, confidence=np.asarray(conf).reshape(m, c, s),
                    trace=trace,
                    active_steps=steps.reshape(m, c, s), seconds=seconds, compiles=counter.count)


def transfer_rate(spec: ModelSpec, judge_variables: dict, gray: GrayData) -> np.ndarray:
    """Fraction of each inverting model's gray images that independently trained judge models
    classify as the target class: [judges, inverting models]."""
    m, c, s = gray.images.shape[:3]
    logits = predict(spec, judge_variables, gray.images.reshape(m * c * s, *spec.image_shape))
    hits = logits.argmax(-1) == gray.labels.reshape(-1)[None]
    return hits.reshape(-1, m, c * s).mean(-1)
