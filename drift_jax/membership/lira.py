"""LiRA, the likelihood-ratio attack (Carlini et al. 2022, "Membership Inference Attacks From
First Principles").

K shadow models (one stack) each train on a random half of a pool, on a balanced keep matrix
(every example IN for exactly K/2 of them). The statistic is the logit-scaled confidence
``phi = log p_y - log sum_{k != y} p_k`` in float64, on the image and its horizontal flip. Per
example, Gaussians are fitted to the IN and OUT statistics (median centre); then

* online:  score = mean over augmentations of log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out)
* offline: score = mean over augmentations of Pr[Z <= phi], Z ~ N(mu_out, s_out)  (one-sided)
* fixed variance: one standard deviation per augmentation pooled over all examples.

Gray data was seen by no shadow, so scoring new images is offline; online needs the pool.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import numpy as np
from scipy import special, stats

from drift_jax.config import TrainConfig
from drift_jax.errors import DriftJaxError
from drift_jax.membership.base import MembershipScores, as_float_images, check_labels, stack_logits
from drift_jax.membership.shadow import shadows_for
from drift_jax.models import ModelSpec


def lira_statistic(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """phi = log p_y - log sum_{k != y} p_k in float64; logits [..., n, C] -> [..., n]."""
    z = np.asarray(logits, np.float64)
    logp = z - special.logsumexp(z, axis=-1, keepdims=True)
    onehot = np.arange(z.shape[-1]) == np.asarray(labels)[:, None]
    log_py = np.where(onehot, logp, 0.0).sum(-1)
    log_rest = special.logsumexp(np.where(onehot, -np.inf, logp), axis=-1)
    return log_py - log_rest


def statistics(spec: ModelSpec, variables: dict, images: np.ndarray,
               labels: np.ndarray) -> np.ndarray:
    """phi of every member of a stack on images and their flips: [N, n, 2]."""
    plain = stack_logits(spec, variables, images)
    flipped = stack_logits(spec, variables, images[:, :, ::-1, :])
    return np.stack([lira_statistic(plain, labels), lira_statistic(flipped, labels)], -1)


def _fit(stats_: np.ndarray, fix_variance: bool):
    """Median centre and standard deviation over shadows: [S, n, A] -> ([n, A], [n, A])."""
    centre = np.median(stats_, axis=0)
    spread = (np.broadcast_to(stats_.std(axis=(0, 1)), centre.shape) if fix_variance
              else stats_.std(axis=0))
    return centre, spread + 1e-30


def online_scores(target: np.ndarray, shadow: np.ndarray, keep: np.ndarray,
                  fix_variance: bool = False) -> np.ndarray:
    """target [n, A], shadow [K, n, A], keep bool [K, n] balanced -> log-likelihood ratio [n]."""
    k, n = keep.shape
    order = np.argsort(~keep, axis=0, kind="stable")  # IN shadows first, per example
    ranked = np.take_along_axis(shadow, order[..., None], axis=0)
    mu_in, s_in = _fit(ranked[: k // 2], fix_variance)
    mu_out, s_out = _fit(ranked[k // 2:], fix_variance)
    llr = stats.norm.logpdf(target, mu_in, s_in) - stats.norm.logpdf(target, mu_out, s_out)
    return llr.mean(-1)


def offline_scores(target: np.ndarray, shadow_out: np.ndarray,
                   fix_variance: bool = False) -> np.ndarray:
    """target [n, A], shadow_out [K_out, n, A] -> Pr[Z <= phi] averaged over augmentations."""
    mu, s = _fit(shadow_out, fix_variance)
    return stats.norm.cdf(target, mu, s).mean(-1)


@dataclasses.dataclass
class LiRA:
    spec: ModelSpec
    variables: dict  # the target (base) model, a stack of one
    num_shadows: int = 16
    train: TrainConfig = TrainConfig()
    fix_variance: bool = False
    offline_fpr: float = 0.05  # offline decision: member if Pr[Z <= phi] >= 1 - offline_fpr
    name: str = "lira"
    keep: np.ndarray | None = None
    pool_statistics: np.ndarray | None = None  # shadows on the pool, [K, n, 2]
    shadows: dict | None = None

    def fit(self, pool_images: np.ndarray, pool_labels: np.ndarray, key: jax.Array,
            progress: bool = False, shadows: dict | None = None,
            keep: np.ndarray | None = None) -> LiRA:
        """Trains K shadows on balanced halves of the pool, or reuses ``shadows`` + ``keep``."""
        labels = check_labels(pool_labels, len(pool_images), self.spec.num_classes)
        self.shadows, self.keep = shadows_for(self.spec, self.num_shadows, pool_images, labels,
                                              self.train, key, progress, shadows, keep)
        self.pool_statistics = statistics(
            self.spec, self.shadows, as_float_images(pool_images, self.spec.image_shape), labels)
        return self

    def _require_fit(self):
        if self.shadows is None:
            raise RuntimeError("call fit() before scoring")

    def score_pool(self, pool_images: np.ndarray, pool_labels: np.ndarray,
                   variant: Literal["online", "offline"] = "online") -> np.ndarray:
        """LiRA scores of the pool examples the shadows were fitted on: [n], higher = member."""
        self._require_fit()
        x = as_float_images(pool_images, self.spec.image_shape)
        if len(x) != self.keep.shape[1]:
            raise DriftJaxError("score_pool needs the same pool that fit() saw.")
        target = statistics(self.spec, self.variables, x, np.asarray(pool_labels))[0]
        if variant == "online":
            return online_scores(target, self.pool_statistics, self.keep, self.fix_variance)
        # offline on the pool: each example's OUT shadows only
        order = np.argsort(self.keep, axis=0, kind="stable")  # OUT first
        ranked = np.take_along_axis(self.pool_statistics, order[..., None], axis=0)
        return offline_scores(target, ranked[: self.num_shadows // 2], self.fix_variance)

    def score(self, images, labels) -> MembershipScores:
        """Offline LiRA on new images (gray data): every shadow is OUT for them."""
        self._require_fit()
        x = as_float_images(images, self.spec.image_shape)
        labels = check_labels(labels, len(x), self.spec.num_classes)
        target = statistics(self.spec, self.variables, x, labels)[0]
        shadow = statistics(self.spec, self.shadows, x, labels)
        p = offline_scores(target, shadow, self.fix_variance)
        return MembershipScores(p, p >= 1 - self.offline_fpr)
