"""Rule-based attack (ART's ``MembershipInferenceBlackBoxRuleBased``): member iff the base model
predicts the label. On base gray data it is ~1.0 by construction (docs/METHOD.md)."""

from __future__ import annotations

import numpy as np

from drift_jax.membership.base import Attack
from drift_jax.membership.metric import output_metrics


class RuleBased(Attack):
    name = "rule_based"
    oriented_score = "target_probability"

    def _probability(self, logits, labels, flat, rows) -> np.ndarray:
        return (logits.argmax(-1) == labels).astype(np.float32)

    def _continuous(self, logits, labels, probability) -> dict[str, np.ndarray]:
        metrics = output_metrics(logits, labels)
        return {k: metrics[k] for k in ("target_probability", "loss", "logit_margin")}
