"""LiRA, the likelihood-ratio attack (Carlini et al. 2022, "Membership Inference Attacks From
First Principles").

K shadow models per target (`base.Shadows`, one stack) each train on a random half of a pool, on
a balanced keep matrix (every example IN for exactly K/2 of them). The statistic is the
logit-scaled confidence ``phi = log p_y - log sum_{k != y} p_k`` in float64, on the image and its
horizontal flip. Per example, Gaussians are fitted to the IN and OUT statistics (median centre);
then

* online:  score = mean over augmentations of log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out)
* offline: score = mean over augmentations of Pr[Z <= phi], Z ~ N(mu_out, s_out)  (one-sided)
* fixed variance: one standard deviation per augmentation pooled over all examples.

Gray data was seen by no shadow, so scoring new images is offline; online needs the pool
(`LiRA.score_pool`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
from scipy import special, stats

from drift_jax import stack
from drift_jax.membership.base import Attack

K_AXIS = -3  # the shadow axis of statistics [..., K, n, augmentations]


def lira_statistic(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """phi = log p_y - log sum_{k != y} p_k in float64; logits [..., n, C], labels
    broadcastable to [..., n] -> [..., n]."""
    z = np.asarray(logits, np.float64)
    logp = z - special.logsumexp(z, axis=-1, keepdims=True)
    onehot = np.arange(z.shape[-1]) == np.asarray(labels)[..., None]
    log_py = np.where(onehot, logp, 0.0).sum(-1)
    log_rest = special.logsumexp(np.where(onehot, -np.inf, logp), axis=-1)
    return log_py - log_rest


def _fit(stats_: np.ndarray, fix_variance: bool):
    """Median centre and standard deviation over shadows: [..., S, n, A] -> ([..., n, A]) x 2."""
    centre = np.median(stats_, axis=K_AXIS)
    spread = (np.broadcast_to(stats_.std(axis=(K_AXIS, -2), keepdims=True)[..., 0, :, :],
                              centre.shape) if fix_variance else stats_.std(axis=K_AXIS))
    return centre, spread + 1e-30


def online_scores(target: np.ndarray, shadow: np.ndarray, keep: np.ndarray,
                  fix_variance: bool = False) -> np.ndarray:
    """target [..., n, A], shadow [..., K, n, A], keep bool [..., K, n] balanced -> log-likelihood
    ratio [..., n]."""
    k = keep.shape[-2]
    order = np.argsort(~keep, axis=-2, kind="stable")  # IN shadows first, per example
    ranked = np.take_along_axis(shadow, order[..., None], axis=K_AXIS)
    mu_in, s_in = _fit(ranked[..., : k // 2, :, :], fix_variance)
    mu_out, s_out = _fit(ranked[..., k // 2:, :, :], fix_variance)
    llr = stats.norm.logpdf(target, mu_in, s_in) - stats.norm.logpdf(target, mu_out, s_out)
    return llr.mean(-1)


def offline_scores(target: np.ndarray, shadow_out: np.ndarray,
                   fix_variance: bool = False) -> np.ndarray:
    """target [..., n, A], shadow_out [..., K_out, n, A] -> Pr[Z <= phi] averaged over
    augmentations, [..., n]."""
    mu, s = _fit(shadow_out, fix_variance)
    return stats.norm.cdf(target, mu, s).mean(-1)


@dataclasses.dataclass
class LiRA(Attack):
    name = "lira"
    needs_shadows = True
    fix_variance: bool = False
    offline_fpr: float = 0.05  # offline decision: member if Pr[Z <= phi] >= 1 - offline_fpr

    def _statistics(self, variables: dict, images, rows: np.ndarray,
                    labels: np.ndarray) -> np.ndarray:
        """phi of every member on its rows of images and their flips: [N, n, 2]."""
        spec = self.context.spec
        return np.stack([lira_statistic(stack.predict(spec, variables, images, rows, flip=f),
                                        labels) for f in (False, True)], -1)

    def _shadow_statistics(self, images, rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """phi of each target's shadows on that target's rows: [T, K, n, 2]."""
        shadows = self.context.shadows
        t, k = shadows.keep.shape[:2]
        phi = self._statistics(shadows.variables, images, shadows.member_rows(rows),
                               shadows.member_rows(labels))
        return phi.reshape(t, k, *phi.shape[1:])

    def score_pool(self, variant: Literal["online", "offline"] = "online") -> np.ndarray:
        """LiRA scores [T, p] of each target's shadow-pool examples; higher = member."""
        ctx, shadows = self.context, self.context.shadows
        labels = ctx.labels[shadows.pool]
        target = self._statistics(ctx.targets, ctx.images, shadows.pool, labels)
        shadow = self._shadow_statistics(ctx.images, shadows.pool, labels)
        if variant == "online":
            return online_scores(target, shadow, shadows.keep, self.fix_variance)
        order = np.argsort(shadows.keep, axis=1, kind="stable")  # OUT shadows first
        ranked = np.take_along_axis(shadow, order[..., None], axis=1)
        return offline_scores(target, ranked[:, : shadows.num_shadows // 2], self.fix_variance)

    def _probability(self, logits, labels, flat, rows) -> np.ndarray:
        """Offline LiRA on new images (gray data): every shadow is OUT for them."""
        target = np.stack([lira_statistic(logits, labels), lira_statistic(stack.predict(
            self.context.spec, self.context.targets, flat, rows, flip=True), labels)], -1)
        return offline_scores(target, self._shadow_statistics(flat, rows, labels),
                              self.fix_variance)

    def _decision(self, probability: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return probability >= 1 - self.offline_fpr

    def _continuous(self, logits, labels, probability) -> dict[str, np.ndarray]:
        return {"offline_probability": probability}
