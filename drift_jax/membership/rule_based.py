"""Rule-based attack (ART's ``MembershipInferenceBlackBoxRuleBased``): member iff the base model
predicts the label. On base gray data it is ~1.0 by construction (METHOD.md)."""

from __future__ import annotations

import dataclasses

import numpy as np

from drift_jax.membership.base import MembershipScores, as_float_images, check_labels, stack_logits
from drift_jax.models import ModelSpec


@dataclasses.dataclass
class RuleBased:
    spec: ModelSpec
    variables: dict  # the base model: leaves [1, ...] (a stack of one)
    name: str = "rule_based"

    def fit(self, *_, **__) -> RuleBased:
        return self  # nothing to learn

    def score(self, images: np.ndarray, labels: np.ndarray) -> MembershipScores:
        x = as_float_images(images, self.spec.image_shape)
        labels = check_labels(labels, len(x), self.spec.num_classes)
        hit = stack_logits(self.spec, self.variables, x)[0].argmax(-1) == labels
        return MembershipScores(hit.astype(np.float32), hit)
