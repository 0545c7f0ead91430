"""Metric-based attacks: a threshold on one statistic of the target's output, no attack model.

* loss (Yeom et al. 2018, "Privacy Risk in Machine Learning"): member iff the cross-entropy loss
  is below the mean loss on known members;
* confidence and modified entropy (Song & Mittal 2021, "Systematic Evaluation of Privacy Risks
  of Machine Learning Models"): member iff the target-class probability is above, or the
  modified entropy ``Mentr = -(1 - p_y) log p_y - sum_{k != y} p_k log(1 - p_k)`` below, a
  per-class threshold chosen on known members vs non-members (the best balanced accuracy).

All three come from one softmax of the target's logits (`output_metrics`), which also gives the
rule-based attack its continuous scores. Scores are oriented so that higher means member and
mapped into [0, 1]: p_y, exp(-loss) (= p_y) and exp(-Mentr).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
from scipy import special

from drift_jax.membership.base import Attack, AttackContext


def output_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image statistics of the target's outputs, in float64: logits [..., n, C], labels
    [..., n] -> {target_probability, loss, logit_margin, modified_entropy}, each [..., n]."""
    z = np.asarray(logits, np.float64)
    logp = z - special.logsumexp(z, axis=-1, keepdims=True)
    p = np.exp(logp)
    onehot = np.arange(z.shape[-1]) == np.asarray(labels)[..., None]
    log_py = np.where(onehot, logp, 0.0).sum(-1)
    p_y = np.exp(log_py)
    log_not = np.log1p(-np.minimum(p, 1 - 1e-12))  # log(1 - p_k)
    mentr = -(1 - p_y) * log_py - np.where(onehot, 0.0, p * log_not).sum(-1)
    runner_up = np.where(onehot, -np.inf, z).max(-1)
    return {"target_probability": p_y, "loss": -log_py,
            "logit_margin": np.where(onehot, z, 0.0).sum(-1) - runner_up,
            "modified_entropy": mentr}


def best_threshold(member: np.ndarray, nonmember: np.ndarray) -> float:
    """The threshold t of "member iff score >= t" with the best balanced accuracy."""
    candidates = np.unique(np.concatenate([member, nonmember]))
    tpr = (member[None] >= candidates[:, None]).mean(1)
    fpr = (nonmember[None] >= candidates[:, None]).mean(1)
    return float(candidates[np.argmax(tpr - fpr)])


@dataclasses.dataclass
class MetricAttack(Attack):
    """Member iff a metric of the target's output passes a threshold fitted on the context."""

    metric: ClassVar[str]
    per_class: ClassVar[bool]
    thresholds: np.ndarray | None = None  # [T, C] (the same value across C when global)

    def _probability(self, logits, labels, flat=None, rows=None) -> np.ndarray:
        """The metric as a score: higher = member, in [0, 1]."""
        value = output_metrics(logits, labels)[self.metric]
        return value if self.metric == "target_probability" else np.exp(-value)

    def _fit(self, context: AttackContext) -> None:
        rows = np.concatenate([context.members, context.nonmembers], 1)
        labels = context.labels[rows]
        score = self._probability(context.predict(context.targets, rows), labels)  # [T, n]
        n_in = context.members.shape[1]
        if not self.per_class:  # Yeom et al.: loss below the members' mean loss
            self.thresholds = np.broadcast_to(
                np.exp(np.log(score[:, :n_in]).mean(1, keepdims=True)),
                (len(rows), context.spec.num_classes))
            return
        # Song & Mittal: per target and class; a class with no examples of a kind keeps 0.5.
        self.thresholds = np.array([[
            best_threshold(s[:n_in][y[:n_in] == k], s[n_in:][y[n_in:] == k])
            if (y[:n_in] == k).any() and (y[n_in:] == k).any() else 0.5
            for k in range(context.spec.num_classes)] for s, y in zip(score, labels)])

    def _decision(self, probability, labels) -> np.ndarray:
        return probability >= np.take_along_axis(self.thresholds, labels, 1)

    def _continuous(self, logits, labels, probability) -> dict[str, np.ndarray]:
        # The metric itself, recovered from its score (no second pass over the outputs).
        if self.metric == "target_probability":
            return {self.metric: probability}
        return {self.metric: -np.log(probability)}


@dataclasses.dataclass
class LossThreshold(MetricAttack):
    name = "loss"
    metric = "loss"
    per_class = False


@dataclasses.dataclass
class Confidence(MetricAttack):
    name = "confidence"
    metric = "target_probability"
    per_class = True


@dataclasses.dataclass
class ModifiedEntropy(MetricAttack):
    name = "modified_entropy"
    metric = "modified_entropy"
    per_class = True
