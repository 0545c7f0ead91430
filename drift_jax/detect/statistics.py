"""Per-model, per-class statistics of a run: arrays [S, models, C] by name, model 0 the base
model, 1 the production model, 2.. the controls; lower means less like the base model.

Two kinds (docs/METHOD.md, "Statistics"):

* membership inference: an attack fitted against the base model scores every model's gray
  data, and `stats.per_class_statistic` summarises each class's scores (`attack_statistics`);
* model agreement on inverted probes: each model answers about gray data, no attack involved
  (`model_statistics`).

Under no drift the production model and the controls are treated alike by every statistic here,
so their ranks stay exchangeable exactly as far as the models themselves are.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import special

from drift_jax import stack
from drift_jax import stats as stats_lib
from drift_jax.detect.config import MODEL_STATISTICS
from drift_jax.inversion import GrayData
from drift_jax.models import ModelSpec


@dataclasses.dataclass(frozen=True)
class GrayScores:
    """One attack's answers on every model's gray data, each [S, models, C, samples]: the
    oriented continuous score (higher = member), the member probability and the 0/1 decision;
    ``continuous`` holds each of the attack's continuous scores by name, same shape."""

    values: np.ndarray
    probability: np.ndarray
    decision: np.ndarray
    continuous: dict[str, np.ndarray]

    @classmethod
    def from_membership(cls, scores, oriented: str, shape: tuple) -> GrayScores:
        """From a `membership.MembershipScores` over the flattened gray images."""
        values = scores.scores.get(oriented, scores.probability)
        return cls(values.reshape(shape), scores.probability.reshape(shape),
                   scores.decision.reshape(shape),
                   {k: v.reshape(shape) for k, v in scores.scores.items()})


def attack_statistics(scores: GrayScores, names) -> dict[str, np.ndarray]:
    """The named attack statistics (`stats.STATISTICS`) of ``scores`` -> {name: [S, models, C]};
    names outside `stats.STATISTICS` are skipped."""
    return {stat: stats_lib.per_class_statistic(scores.values, scores.probability, stat)
            for stat in names if stat in stats_lib.STATISTICS}


def answers_on_base_gray(spec: ModelSpec, trained: dict, base_gray: np.ndarray,
                         group: int) -> np.ndarray:
    """Every model's class probabilities [S, group, C, samples, classes] on its seed's base
    model's gray images ``base_gray`` [S, C, samples, H, W, ch] (the stack's seeds in groups of
    ``group``: the base model, the production model, then the controls), in one batched
    inference call."""
    num_seeds, c, samples = base_gray.shape[:3]
    flat = base_gray.reshape(num_seeds * c * samples, *base_gray.shape[3:])
    index = np.repeat(np.arange(len(flat)).reshape(num_seeds, -1), group, axis=0)
    logits = stack.predict(spec, trained, flat, index)
    return special.softmax(logits, axis=-1).reshape(num_seeds, group, c, samples, -1)


def reverse_statistic(on_base_gray: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``reverse`` [S, models, C]: the mean clipped logit of each model's probability of the
    target ``classes`` [C] on the base model's gray data (``on_base_gray`` [S, models, C,
    samples, classes], `answers_on_base_gray`)."""
    target = np.take_along_axis(on_base_gray, np.reshape(classes, (1, 1, -1, 1, 1)), -1)[..., 0]
    return stats_lib.clipped_logit(target).mean(-1)


def model_statistics(gray: GrayData, on_base_gray: np.ndarray) -> dict[str, np.ndarray]:
    """`MODEL_STATISTICS` [S, models, C], as mean clipped logits (`stats.clipped_logit`):

    * ``self_confidence``: the model's own probability of the target on its gray data (the
      confidence its inversion reached). A class that shares its images with another in the
      model's training labels (a partial relabel or swap) cannot be made as certain.
    * ``reverse``: the model's probability of the target on the *base* model's gray data of that
      class (`reverse_statistic`): is the base model's picture of the class still one for this
      model? A partial relabel a -> b leaves the production model's own prototypes of a and b
      intact, but lowers its answer on the base model's.
    """
    num_seeds, group, c = on_base_gray.shape[:3]
    confidence = gray.confidence.reshape(num_seeds, group, c, -1)
    return dict(zip(MODEL_STATISTICS, (stats_lib.clipped_logit(confidence).mean(-1),
                                       reverse_statistic(on_base_gray, gray.classes))))
