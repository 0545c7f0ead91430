"""One protocol for every membership-inference attack: ``fit(context)``, then
``score(images, labels)``.

Every attack targets T models at once (the base model of each seed of a run; T = 1 for a single
target). An `AttackContext` holds what attacks may learn from: the targets as one stack, one
image pool with index arrays of each target's known members and non-members, and, for the
attacks that need them, `Shadows` trained once and passed explicitly. ``score`` takes images
[T, n, H, W, ch] (target t judges row t; for T = 1 a plain [n, H, W, ch] is accepted) and labels
[T, n], and returns `MembershipScores` of that shape. Images are uint8 0..255 or floats in [0, 1]
(gray data). Every attack targets the BASE model (docs/METHOD.md).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import numpy as np

from drift_jax import stack
from drift_jax.config import TrainConfig
from drift_jax.errors import DriftJaxError
from drift_jax.models import ModelSpec


@dataclasses.dataclass
class MembershipScores:
    """Per-image member probability (or score) and decision, [T, n] (or [n]); higher means
    member. ``scores`` holds the attack's continuous per-image statistics by name, same shape
    (rule-based: target probability, loss, logit margin; learned attacks: the member
    probability; LiRA: its offline probability; metric attacks: their metric)."""

    probability: np.ndarray
    decision: np.ndarray
    scores: dict = dataclasses.field(default_factory=dict)

    def summary(self) -> dict:
        """``member_fraction`` is what the original work reported as the attack's "accuracy"."""
        return {"member_fraction": float(np.mean(self.decision)),
                "mean_probability": float(np.mean(self.probability)), "n": int(self.decision.size)}


def as_float_images(images: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """uint8 0..255 or float [0, 1] images -> float32 [..., H, W, ch] in [0, 1], validated."""
    images = np.asarray(images)
    if images.ndim < 4 or tuple(images.shape[-3:]) != tuple(image_shape):
        raise DriftJaxError(f"images must have shape [n, {', '.join(map(str, image_shape))}], "
                            f"got {images.shape}.")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    if not np.issubdtype(images.dtype, np.floating):
        raise DriftJaxError(f"images must be uint8 or float in [0, 1], got {images.dtype}.")
    if not np.isfinite(images).all():
        raise DriftJaxError("images contain NaN or Inf; they cannot be scored.")
    if images.size and (images.min() < 0 or images.max() > 1):
        raise DriftJaxError("float images must lie in [0, 1]; divide 0..255 data by 255.")
    return images.astype(np.float32)


def check_labels(labels: np.ndarray, shape: tuple[int, ...], num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != tuple(shape) or not np.issubdtype(labels.dtype, np.integer):
        raise DriftJaxError(f"labels must be integers of shape {list(shape)}, got {labels.dtype} "
                            f"{list(labels.shape)}.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DriftJaxError(f"labels must lie in 0..{num_classes - 1}.")
    return labels.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Shadows:
    """K shadow models per target, trained as one stack [T * K] (target-major) on balanced
    random halves of each target's shadow pool (Shokri et al. 2017; every pool example IN for
    exactly K/2 of them, Carlini et al. 2022). The Shokri and LiRA attacks share one set."""

    variables: dict  # leaves [T * K, ...]
    pool: np.ndarray  # int [T, p]: indices into the context's images
    keep: np.ndarray  # bool [T, K, p]: shadow k of target t trained on pool[t][keep[t, k]]

    @property
    def num_shadows(self) -> int:
        return self.keep.shape[1]

    def member_rows(self, rows: np.ndarray) -> np.ndarray:
        """Per-target index rows [T, n] -> per-shadow rows [T * K, n] (shadow reads its target's
        row)."""
        return np.repeat(rows, self.num_shadows, axis=0)


def balanced_keep(num_shadows: int, n: int, key: jax.Array) -> np.ndarray:
    """bool [K, n]: every example is IN for exactly K/2 shadows (Carlini et al. 2022)."""
    if num_shadows < 2 or num_shadows % 2:
        raise DriftJaxError(f"num_shadows must be an even number >= 2, got {num_shadows}.")
    scores = np.asarray(jax.random.uniform(key, (n, num_shadows)))
    ranks = scores.argsort(1).argsort(1)  # a random permutation of shadows per example
    return (ranks < num_shadows // 2).T


def train_shadows(spec: ModelSpec, images: np.ndarray, labels: np.ndarray, pool: np.ndarray,
                  num_shadows: int, config: TrainConfig, keys: jax.Array,
                  progress: bool = False) -> Shadows:
    """K shadows for each of T targets, all T * K as one stack on one image array.

    Args:
      images: uint8 [P, H, W, ch]; labels int [P].
      pool: int [T, p] (or [p] for one target): each target's shadow pool, indices into images.
      keys: [T] PRNG keys (or one key for T = 1): target t's keep matrix and shadows.
    """
    pool = np.atleast_2d(np.asarray(pool, np.int64))
    keys = stack.per_member_keys(keys, pool.shape[0])
    if np.asarray(images).dtype != np.uint8:
        raise DriftJaxError("the shadow pool must be uint8 images (a Dataset's images).")
    if pool.shape[1] < 2 * spec.num_classes:
        raise DriftJaxError(f"the shadow pool has {pool.shape[1]} images; it needs at least "
                            f"{2 * spec.num_classes} to train shadow models.")
    split = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
    keep = np.stack([balanced_keep(num_shadows, pool.shape[1], k) for k in split[:, 0]])
    indices = [row[k] for row, target_keep in zip(pool, keep) for k in target_keep]
    init_keys = jax.vmap(lambda k: jax.random.split(k, num_shadows))(split[:, 1]).reshape(-1)
    train_keys = jax.vmap(lambda k: jax.random.split(k, num_shadows))(split[:, 2]).reshape(-1)
    variables = stack.init_stack(spec, init_keys)
    trained = stack.train_stack(spec, variables, images, labels, indices, config, train_keys,
                                progress=progress).variables
    return Shadows(trained, pool, keep)


@dataclasses.dataclass(frozen=True)
class AttackContext:
    """What the attacks on T target models may learn from (module docstring)."""

    spec: ModelSpec
    targets: dict  # the target (base) models, leaves [T, ...]
    images: object  # [P, H, W, ch] uint8 (numpy, or a device array kept resident)
    labels: np.ndarray  # int [P]
    members: np.ndarray  # int [T, n]: known training examples of target t
    nonmembers: np.ndarray  # int [T, n]: examples target t never saw
    keys: jax.Array  # [T]
    shadows: Shadows | None = None

    def __post_init__(self):
        t = stack.stack_size(self.targets)
        for name in ("members", "nonmembers"):
            rows = np.atleast_2d(np.asarray(getattr(self, name), np.int64))
            if rows.shape[0] != t:
                raise DriftJaxError(f"AttackContext.{name}: {rows.shape[0]} rows for {t} "
                                    "target models; give one index row per target.")
            object.__setattr__(self, name, rows)
        object.__setattr__(self, "keys", stack.per_member_keys(self.keys, t))

    @property
    def num_targets(self) -> int:
        return stack.stack_size(self.targets)

    def predict(self, variables: dict, rows: np.ndarray, flip: bool = False) -> np.ndarray:
        """Logits of a stack on the pool rows [N, n] (one row per member) -> [N, n, C]."""
        return stack.predict(self.spec, variables, self.images, rows, flip=flip)


def target_batch(spec: ModelSpec, num_targets: int, images, labels):
    """Validated (flat float images [T * n, ...], labels [T, n], per-target rows [T, n]) of what
    ``score`` receives: images [T, n, H, W, ch] ([n, H, W, ch] when T = 1)."""
    x = as_float_images(images, spec.image_shape)
    if x.ndim == 4 and num_targets == 1:
        x = x[None]
    if x.ndim != 5 or x.shape[0] != num_targets:
        raise DriftJaxError(f"images to score must be [targets={num_targets}, n, "
                            f"{', '.join(map(str, spec.image_shape))}], got {list(x.shape)}.")
    n = x.shape[1]
    labels = np.asarray(labels)
    labels = check_labels(labels[None] if labels.ndim == 1 and num_targets == 1 else labels,
                          (num_targets, n), spec.num_classes)
    rows = np.arange(num_targets * n).reshape(num_targets, n)
    return x.reshape(num_targets * n, *spec.image_shape), labels, rows


class Attack:
    """Base of every attack: ``fit(context)`` keeps the context and learns what the attack
    needs; ``score`` reads the targets' logits on the images (one batched call for all targets)
    and turns them into member probabilities with ``_probability``."""

    name: ClassVar[str]
    needs_shadows: ClassVar[bool] = False
    # The continuous score that detect's distribution statistics read (higher = member);
    # None: the member probability itself.
    oriented_score: ClassVar[str | None] = None
    context: AttackContext | None = None

    def fit(self, context: AttackContext) -> Attack:
        if self.needs_shadows and context.shadows is None:
            raise DriftJaxError(f"the {self.name} attack needs shadow models: build the context "
                                "with shadows=train_shadows(...).")
        self.context = context
        self._fit(context)
        return self

    def _fit(self, context: AttackContext) -> None:
        """Learns from the context (nothing, by default)."""

    def score(self, images, labels) -> MembershipScores:
        if self.context is None:
            raise DriftJaxError(f"call fit(context) before scoring with the {self.name} attack.")
        ctx = self.context
        flat, labels, rows = target_batch(ctx.spec, ctx.num_targets, images, labels)
        logits = stack.predict(ctx.spec, ctx.targets, flat, rows)
        p = self._probability(logits, labels, flat, rows)
        out = MembershipScores(p, self._decision(p, labels), self._continuous(logits, labels, p))
        if np.ndim(images) == 4:  # a single target's images in: its scores out
            out = MembershipScores(out.probability[0], out.decision[0],
                                   {k: v[0] for k, v in out.scores.items()})
        return out

    def _probability(self, logits: np.ndarray, labels: np.ndarray, flat: np.ndarray,
                     rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _decision(self, probability: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return probability >= 0.5

    def _continuous(self, logits: np.ndarray, labels: np.ndarray,
                    probability: np.ndarray) -> dict[str, np.ndarray]:
        """The attack's continuous per-image statistics (default: its member probability)."""
        return {"member_probability": probability}
