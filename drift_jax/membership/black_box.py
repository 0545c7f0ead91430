"""Black-box attack as ART's ``MembershipInferenceBlackBox`` (attack_model_type='nn') runs it:
an attack network on the base model's outputs (probabilities or logits, by option) plus the
one-hot label, trained on base training images (members) against held-out images."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import numpy as np

from drift_jax.membership.attack_model import AttackModels, AttackTrainConfig, train_attack_models
from drift_jax.membership.base import MembershipScores, as_float_images, check_labels, stack_logits
from drift_jax.models import ModelSpec


def output_features(logits: np.ndarray, output: str) -> np.ndarray:
    """Model outputs as attack features: softmax probabilities or raw logits, [n, C]."""
    return np.asarray(jax.nn.softmax(logits) if output == "probability" else logits)


def target_features(spec: ModelSpec, variables: dict, images, labels,
                    output: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated (features [n, C], labels [n]) of the target model on images to score."""
    x = as_float_images(images, spec.image_shape)
    labels = check_labels(labels, len(x), spec.num_classes)
    return output_features(stack_logits(spec, variables, x)[0], output), labels


@dataclasses.dataclass
class BlackBox:
    spec: ModelSpec
    variables: dict  # the base model, a stack of one
    output: Literal["probability", "logit"] = "probability"
    train: AttackTrainConfig = AttackTrainConfig()
    name: str = "black_box"
    models: AttackModels | None = None

    def fit(self, member_images, member_labels, nonmember_images, nonmember_labels,
            key: jax.Array) -> BlackBox:
        images = np.concatenate([as_float_images(member_images, self.spec.image_shape),
                                 as_float_images(nonmember_images, self.spec.image_shape)])
        labels = check_labels(np.concatenate([member_labels, nonmember_labels]), len(images),
                              self.spec.num_classes)
        is_member = np.arange(len(images)) < len(member_images)
        feats = output_features(stack_logits(self.spec, self.variables, images)[0], self.output)
        self.models = train_attack_models(feats, labels, is_member, np.ones((1, len(images))),
                                          key, self.train)
        return self

    def score(self, images, labels) -> MembershipScores:
        if self.models is None:
            raise RuntimeError("call fit() before score()")
        feats, labels = target_features(self.spec, self.variables, images, labels, self.output)
        p = self.models.probability(feats, labels)
        return MembershipScores(p, p >= 0.5)
