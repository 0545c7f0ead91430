"""Attacks that learn member vs non-member from model outputs with ART's attack network.

* black box, as ART's ``MembershipInferenceBlackBox`` (attack_model_type='nn') runs it: the
  network reads the target's outputs (probabilities or logits, by option) plus the one-hot label
  and learns from the target's known members (base training images) against held-out images;
* shadow models (Shokri et al. 2017): it learns from K shadow models' outputs on their own IN and
  OUT examples instead, one global network per target or one per target and class; ART trains
  its shadows one after another and only a global attack model.

Both score the same way, so they share `OutputAttack`; the networks of all targets (and classes)
train as one program (`attack_model.train_attack_models`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import numpy as np
from scipy import special

from drift_jax.membership.attack_model import AttackModels, AttackTrainConfig, train_attack_models
from drift_jax.membership.base import Attack, AttackContext


def output_features(logits: np.ndarray, output: str) -> np.ndarray:
    """Model outputs as attack features: softmax probabilities or raw logits, [..., C]."""
    return special.softmax(logits, axis=-1) if output == "probability" else np.asarray(logits)


@dataclasses.dataclass
class OutputAttack(Attack):
    """An attack network per target (or per target and class) on the target's outputs."""

    output: Literal["probability", "logit"] = "probability"
    train: AttackTrainConfig = AttackTrainConfig()
    per_class: bool = False
    models: AttackModels | None = None

    def _fit(self, context: AttackContext) -> None:
        features, labels, is_member, keys = self._training_set(context)  # [T, n, ...]
        t, n = labels.shape
        masks = np.ones((t, n), bool)
        if self.per_class:  # model (t, c) learns from target t's examples of class c
            c = context.spec.num_classes
            masks = (labels[:, None] == np.arange(c)[None, :, None]).reshape(t * c, n)
            features, labels, is_member = (np.repeat(a, c, axis=0)
                                           for a in (features, labels, is_member))
            keys = jax.vmap(lambda k: jax.random.split(k, c))(keys).reshape(-1)
        self.models = train_attack_models(features, labels, is_member, masks, keys, self.train,
                                          context.spec.num_classes)

    def _training_set(self, context: AttackContext):
        """(features [T, n, F], labels [T, n], is_member [T, n], keys [T])."""
        raise NotImplementedError

    def _probability(self, logits, labels, flat, rows) -> np.ndarray:
        features = output_features(logits, self.output)
        if not self.per_class:
            return self.models.probability(features, labels)
        c = self.context.spec.num_classes
        t, n = labels.shape
        every = self.models.probability(np.repeat(features, c, 0), np.repeat(labels, c, 0))
        return np.take_along_axis(every.reshape(t, c, n), labels[:, None], 1)[:, 0]


@dataclasses.dataclass
class BlackBox(OutputAttack):
    name = "black_box"

    def _training_set(self, context: AttackContext):
        rows = np.concatenate([context.members, context.nonmembers], 1)
        logits = context.predict(context.targets, rows)
        is_member = np.arange(rows.shape[1]) < context.members.shape[1]
        return (output_features(logits, self.output), context.labels[rows],
                np.broadcast_to(is_member, rows.shape), context.keys)


@dataclasses.dataclass
class ShadowModels(OutputAttack):
    name = "shadow"
    needs_shadows = True

    def _training_set(self, context: AttackContext):
        shadows = context.shadows
        t, k, p = shadows.keep.shape
        logits = context.predict(shadows.variables, shadows.member_rows(shadows.pool))
        features = output_features(logits, self.output).reshape(t, k * p, -1)
        labels = np.repeat(context.labels[shadows.pool], k, axis=0).reshape(t, k * p)
        return features, labels, shadows.keep.reshape(t, k * p), context.keys
