"""Shadow-model attack (Shokri et al. 2017): K shadow models of the target's architecture, trained
together as one stack on halves of a shadow pool from the base distribution; an attack network
learns member/non-member from their outputs on their own IN and OUT examples, then reads the
target's outputs. One global attack model, or one per class (``per_class=True``); ART trains its
shadows one after another and only a global attack model."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import numpy as np

from drift_jax import stack
from drift_jax.config import TrainConfig
from drift_jax.errors import DriftJaxError
from drift_jax.membership.attack_model import AttackModels, AttackTrainConfig, train_attack_models
from drift_jax.membership.base import MembershipScores, as_float_images, check_labels, stack_logits
from drift_jax.membership.black_box import output_features, target_features
from drift_jax.models import ModelSpec


def balanced_keep(num_shadows: int, n: int, key: jax.Array) -> np.ndarray:
    """bool [K, n]: every example is IN for exactly K/2 shadows (Carlini et al. 2022)."""
    if num_shadows < 2 or num_shadows % 2:
        raise DriftJaxError(f"num_shadows must be an even number >= 2, got {num_shadows}.")
    scores = np.asarray(jax.random.uniform(key, (n, num_shadows)))
    ranks = scores.argsort(1).argsort(1)  # a random permutation of shadows per example
    return (ranks < num_shadows // 2).T


def train_shadows(spec: ModelSpec, images: np.ndarray, labels: np.ndarray, keep: np.ndarray,
                  config: TrainConfig, key: jax.Array, progress: bool = False) -> dict:
    """Shadow k trains on the pool examples where ``keep[k]`` holds; all K as one stack."""
    if images.dtype != np.uint8:
        raise DriftJaxError("the shadow pool must be uint8 images (a Dataset's images).")
    if keep.sum(1).min() < 1:
        raise DriftJaxError("the shadow pool is too small to give every shadow model data; "
                            "use fewer shadows or a larger pool.")
    init_key, train_key = jax.random.split(key)
    variables = stack.init_stack(spec, jax.random.split(init_key, keep.shape[0]))
    return stack.train_stack(spec, variables, images, labels,
                             [np.flatnonzero(k) for k in keep], config, train_key,
                             progress=progress).variables


def shadows_for(spec: ModelSpec, num_shadows: int, images: np.ndarray, labels: np.ndarray,
                config: TrainConfig, key: jax.Array, progress: bool = False,
                shadows: dict | None = None, keep: np.ndarray | None = None):
    """(shadows, keep): trained here on a balanced keep matrix, or the given pair checked and
    reused (so LiRA and the Shokri attack can share one stack, as in Carlini et al.)."""
    if shadows is not None:
        if keep is None or keep.shape != (num_shadows, len(images)):
            raise DriftJaxError("reusing shadows needs their keep matrix [num_shadows, n].")
        return shadows, keep
    keep_key, train_key = jax.random.split(key)
    keep = balanced_keep(num_shadows, len(images), keep_key)
    return train_shadows(spec, images, labels, keep, config, train_key, progress), keep


@dataclasses.dataclass
class ShadowModels:
    spec: ModelSpec
    variables: dict  # the target (base) model, a stack of one
    num_shadows: int = 16
    train: TrainConfig = TrainConfig()
    output: Literal["probability", "logit"] = "probability"
    per_class: bool = False
    attack_train: AttackTrainConfig = AttackTrainConfig()
    name: str = "shadow"
    models: AttackModels | None = None
    shadow_seconds: float = 0.0
    shadows: dict | None = None  # the trained shadow stack and its keep matrix, after fit()
    keep: np.ndarray | None = None

    def fit(self, pool_images: np.ndarray, pool_labels: np.ndarray, key: jax.Array,
            progress: bool = False, shadows: dict | None = None,
            keep: np.ndarray | None = None) -> ShadowModels:
        """``pool_images``: uint8 [n, H, W, ch] from the base distribution; shadow k trains on
        the examples where ``keep[k]`` holds (a balanced random half). Pass ``shadows`` and their
        ``keep`` matrix to reuse a trained stack (e.g. LiRA's: both attacks on one set of
        shadows, as in Carlini et al.)."""
        import time

        labels = check_labels(pool_labels, len(pool_images), self.spec.num_classes)
        if len(pool_images) < 2 * self.spec.num_classes:
            raise DriftJaxError(f"the shadow pool has {len(pool_images)} images; it needs at "
                                f"least {2 * self.spec.num_classes} to train shadow models.")
        shadow_key, attack_key = jax.random.split(key)
        start = time.perf_counter()
        shadows, keep = shadows_for(self.spec, self.num_shadows, pool_images, labels, self.train,
                                    shadow_key, progress, shadows, keep)
        self.shadow_seconds = time.perf_counter() - start
        self.shadows, self.keep = shadows, keep
        x = as_float_images(pool_images, self.spec.image_shape)
        feats = output_features(stack_logits(self.spec, shadows, x), self.output)  # [K, n, C]
        feats = feats.reshape(-1, feats.shape[-1])
        all_labels = np.tile(labels, self.num_shadows)
        if self.per_class:
            masks = np.stack([all_labels == c for c in range(self.spec.num_classes)])
        else:
            masks = np.ones((1, len(all_labels)), bool)
        self.models = train_attack_models(feats, all_labels, keep.reshape(-1), masks,
                                          attack_key, self.attack_train)
        return self

    def score(self, images, labels) -> MembershipScores:
        if self.models is None:
            raise RuntimeError("call fit() before score()")
        feats, labels = target_features(self.spec, self.variables, images, labels, self.output)
        p = self.models.probability(feats, labels, labels if self.per_class else None)
        return MembershipScores(p, p >= 0.5)
