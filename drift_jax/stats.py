"""The decision statistics of docs/METHOD.md ("The calibrated test", "Localisation").

* calibrated p-value from M control models: p = (1 + #{control <= observed}) / (M + 1)
  (a one-sided Monte-Carlo p-value for "the production score is unusually low"),
* Holm and Benjamini-Hochberg corrections for per-class p-values,
* a permutation test on per-image scores, p = (k + 1) / (n + 1).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special
from scipy import stats as sp_stats

from drift_jax import validate
from drift_jax.errors import DriftJaxError


def calibrated_p_value(control_scores, observed) -> np.ndarray:
    """control_scores [M, ...] under the null; observed [...] -> p-values [...] in (0, 1]."""
    control = np.asarray(control_scores, float)
    if control.ndim < 1 or control.shape[0] < 1:
        raise DriftJaxError("calibrated_p_value needs at least one control score.")
    observed = np.asarray(observed, float)
    return (1.0 + (control <= observed[None]).sum(0)) / (control.shape[0] + 1.0)


def prediction_p_value(control_scores, observed) -> np.ndarray:
    """control_scores [M, ...], observed [...] -> one-sided p-values [...] that ``observed`` is
    unusually low, from the t prediction interval for one new draw of the controls' distribution:
    t = (observed - mean) / (sd * sqrt(1 + 1 / M)) on M - 1 degrees of freedom (normal scores).

    Unlike `calibrated_p_value` it is continuous, so it can pass a correction over many classes
    with few controls (a rank p-value is at least 1 / (M + 1)); unlike a test of pooled per-image
    scores it counts each model once, so the between-model spread of the controls is the null's
    (pooled images treat one model's quirk as many independent draws and reject too often)."""
    control = np.asarray(control_scores, float)
    if control.ndim < 1 or control.shape[0] < 2:
        raise DriftJaxError("prediction_p_value needs at least two control scores.")
    m = control.shape[0]
    spread = control.std(0, ddof=1) * np.sqrt(1.0 + 1.0 / m)
    t = (np.asarray(observed, float) - control.mean(0)) / np.maximum(spread, 1e-12)
    return sp_stats.t.cdf(t, df=m - 1)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error rate)."""
    p = np.asarray(p_values, float)
    m = p.size
    order = np.argsort(p)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), `scipy.stats`'s."""
    return sp_stats.false_discovery_control(np.asarray(p_values, float), method="bh")


CORRECTIONS = {"holm": holm, "bh": benjamini_hochberg}


@functools.partial(jax.jit, static_argnums=(3,))
def _permutation_nulls(pooled, nx, keys, num_permutations):
    """pooled [K, nx + ny], keys [K] -> null differences of means [K, num_permutations]."""
    in_x = jnp.arange(pooled.shape[1]) < nx
    ny = pooled.shape[1] - nx

    def null(sample, key):
        def statistic(k):
            perm = jax.random.permutation(k, sample)
            return jnp.sum(jnp.where(in_x, perm, 0)) / nx - jnp.sum(jnp.where(in_x, 0, perm)) / ny

        return jax.vmap(statistic)(jax.random.split(key, num_permutations))

    return jax.vmap(null)(pooled, keys)


def permutation_tests(x, y, keys: jax.Array, num_permutations: int = 2000) -> dict:
    """K one-sided tests at once: that mean(y[k]) < mean(x[k]), by relabelling pooled samples.

    x [K, nx], y [K, ny], keys [K]. The permutations of all K tests are one vmapped program
    (one compile per shape). p = (k + 1) / (n + 1) with k the permutations whose difference
    mean(x') - mean(y') is at least the observed one. Returns "statistic" and "p_value", each [K].
    """
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0] or len(keys) != x.shape[0]:
        raise DriftJaxError(f"permutation_tests needs x [K, nx], y [K, ny] and K keys; got "
                            f"{x.shape}, {y.shape} and {len(keys)} keys.")
    if x.shape[1] == 0 or y.shape[1] == 0:
        raise DriftJaxError("a permutation test needs non-empty samples x and y.")
    validate.check_memory(4.0 * x.shape[0] * num_permutations * (x.shape[1] + y.shape[1] + 1),
                          f"{x.shape[0]} permutation tests of {num_permutations} permutations",
                          "lower permutations")
    observed = x.mean(1) - y.mean(1)
    null = _permutation_nulls(jnp.asarray(np.concatenate([x, y], 1)), x.shape[1], keys,
                              num_permutations)
    k = np.sum(np.asarray(null) >= observed[:, None] - 1e-6, axis=1)
    return {"statistic": observed, "p_value": (k + 1) / (num_permutations + 1)}


def fisher_tests(x, y) -> dict:
    """K one-sided exact tests that binary y[k] holds a larger share of ones than x[k]: Fisher's
    exact test, the limit of `permutation_tests` on 0/1 samples as every relabelling is counted
    (the count of ones in y given the pooled count is hypergeometric), without drawing any.

    x [K, nx], y [K, ny] of 0/1. Returns "statistic" mean(y) - mean(x) and "p_value", each [K].
    """
    x, y = np.asarray(x, bool), np.asarray(y, bool)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise DriftJaxError(f"fisher_tests needs x [K, nx] and y [K, ny]; got {x.shape} and "
                            f"{y.shape}.")
    ones = y.sum(1)
    p = sp_stats.hypergeom.sf(ones - 1, x.shape[1] + y.shape[1], x.sum(1) + ones, y.shape[1])
    return {"statistic": y.mean(1) - x.mean(1), "p_value": np.minimum(p, 1.0)}


def permutation_test(x, y, key: jax.Array, num_permutations: int = 2000) -> dict:
    """One test of `permutation_tests`: x [nx], y [ny] (any shape, flattened), one key."""
    out = permutation_tests(np.ravel(x)[None], np.ravel(y)[None], key[None], num_permutations)
    return {"statistic": float(out["statistic"][0]), "p_value": float(out["p_value"][0])}


STATISTICS = ("fraction", "mean", "logit_mean", "auc", "ks")
# the logit's clip: a class mean of six 9s is at the ceiling already (reports keep six decimals)
LOGIT_CLIP = 1e-6


def clipped_logit(p, clip: float = LOGIT_CLIP) -> np.ndarray:
    """Probabilities -> logits, clipped to [clip, 1 - clip] so that a mean at 0 or 1 stays
    finite."""
    return special.logit(np.clip(p, clip, 1 - clip))


def per_class_statistic(values: np.ndarray, members: np.ndarray, stat: str) -> np.ndarray:
    """A statistic of each model's gray-score distribution per class, oriented so that lower
    means less like the base model's gray data (drift).

    values: continuous member scores [..., models, C, S], higher = more member-like, model 0 the
    base model; members: member probabilities (an attack's 0/1 answers for a rule), same shape.
    Returns [..., models, C]: ``fraction``: the mean member probability (for a rule, the fraction
    of images called members: the original protocol's score); ``mean`` score; ``logit_mean``:
    the mean score (a probability) on the logit scale, where a class near its ceiling of 1 is not
    compressed against it, so a standardised deficit reads alike in every class;
    ``auc`` P(score > a base image's score) + P(tie) / 2 in the class (Mann-Whitney); ``ks`` minus
    the two-sample KS distance to the base model's scores.
    """
    if stat == "fraction":
        return members.mean(-1)
    if stat == "mean":
        return values.mean(-1)
    if stat == "logit_mean":
        return clipped_logit(values.mean(-1))
    base = np.broadcast_to(values[..., :1, :, :], values.shape)
    if stat == "auc":
        above = (values[..., :, None] > base[..., None, :]).mean((-1, -2))
        ties = (values[..., :, None] == base[..., None, :]).mean((-1, -2))
        return above + 0.5 * ties
    if stat == "ks":
        return -np.asarray(sp_stats.ks_2samp(values, base, axis=-1).statistic)
    raise DriftJaxError(f"stat must be one of {', '.join(STATISTICS)}, got {stat!r}.")


COMBINATIONS = ("class_mean", "largest_deficit", "two_largest_deficits")


def standardised_deficits(per_class: np.ndarray, models: np.ndarray) -> np.ndarray:
    """Per-class statistics [..., G, C] -> z-scores [..., G, C]: each class standardised, so a
    negative z is a deficit. A model among ``models`` (the production model and the controls) is
    standardised by the mean and sd of the *other* ones (leave one out): every one of them is
    treated alike, so under no drift they stay exchangeable and the production model's rank
    among the controls stays an exact p-value, and a drifted model does not dilute its own
    deficit. Other models (the base) use all of ``models``."""
    reference = per_class[..., models, :]
    n = reference.shape[-2]
    total, squares = reference.sum(-2, keepdims=True), (reference ** 2).sum(-2, keepdims=True)
    mean = np.broadcast_to(total / n, per_class.shape).copy()
    var = np.broadcast_to(squares / n - (total / n) ** 2, per_class.shape).copy()
    others_mean = (total - reference) / (n - 1)
    mean[..., models, :] = others_mean
    var[..., models, :] = (squares - reference ** 2) / (n - 1) - others_mean ** 2
    return (per_class - mean) / (np.sqrt(np.maximum(var, 0.0)) + 1e-12)


def combine_classes(per_class: np.ndarray, models: np.ndarray, combine: str) -> np.ndarray:
    """One score per model from per-class statistics [..., G, C] -> [..., G], lower = drift.

    ``class_mean``: the average over classes (the original protocol); ``largest_deficit``: the
    smallest standardised class statistic; ``two_largest_deficits``: the mean of the two smallest
    (a change that lives in two classes, such as a swap or a relabel a -> b, counts twice). Each
    treats the production model and the controls alike, so the rank p-value stays exact."""
    if combine == "class_mean":
        return per_class.mean(-1)
    z = standardised_deficits(per_class, models)
    if combine == "largest_deficit":
        return z.min(-1)
    if combine == "two_largest_deficits":
        return np.sort(z, -1)[..., :2].mean(-1)
    raise DriftJaxError(f"combine must be one of {', '.join(COMBINATIONS)}, got {combine!r}.")


def min_rank(scores: np.ndarray, models: np.ndarray) -> np.ndarray:
    """Several scores of every model [K, ..., G] (lower = drift) -> one [..., G]: each model's
    smallest rank over the K scores, a rank counting the models among ``models`` (the production
    model and the controls) that score at or below it; ties of the smallest rank are broken by
    the mean rank (without that, the model lowest by another statistic ties the production model
    and the test could rarely reject). Every one of ``models`` is ranked alike, so under no drift
    they stay exchangeable and the production model's rank among the controls on this combined
    score is still an exact p-value: an omnibus test that rejects when one of the K statistics
    puts the production model at the bottom."""
    reference = scores[..., models]  # [K, ..., n]
    ranks = (reference[..., None, :] <= scores[..., :, None]).sum(-1)  # [K, ..., G]
    return ranks.min(0) + ranks.mean(0) / (len(models) + 1.0)
