"""Rule-based attack (ART's ``MembershipInferenceBlackBoxRuleBased``): member iff the base model
predicts the label. On base gray data it is ~1.0 by construction (METHOD.md)."""

from __future__ import annotations

import numpy as np

from drift_jax.membership.base import Attack


class RuleBased(Attack):
    name = "rule_based"

    def _probability(self, logits, labels, flat, rows) -> np.ndarray:
        return (logits.argmax(-1) == labels).astype(np.float32)
