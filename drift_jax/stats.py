"""The decision statistics of METHOD.md ("Deciding drift: a test, not <<").

* calibrated p-value from M control models: p = (1 + #{control <= observed}) / (M + 1)
  (a one-sided Monte-Carlo p-value for "the production score is unusually low"),
* Holm and Benjamini-Hochberg corrections for per-class p-values,
* a permutation test on per-image scores, p = (k + 1) / (n + 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from drift_jax.errors import DriftJaxError


def calibrated_p_value(control_scores, observed) -> np.ndarray:
    """control_scores [M, ...] under the null; observed [...] -> p-values [...] in (0, 1]."""
    control = np.asarray(control_scores, float)
    if control.ndim < 1 or control.shape[0] < 1:
        raise DriftJaxError("calibrated_p_value needs at least one control score.")
    observed = np.asarray(observed, float)
    return (1.0 + (control <= observed[None]).sum(0)) / (control.shape[0] + 1.0)


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
    """Benjamini-Hochberg adjusted p-values (false discovery rate)."""
    p = np.asarray(p_values, float)
    m = p.size
    order = np.argsort(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


CORRECTIONS = {"holm": holm, "bh": benjamini_hochberg}


def permutation_test(x, y, key: jax.Array, num_permutations: int = 2000) -> dict:
    """One-sided test that mean(y) < mean(x), by relabelling the pooled samples.

    Permutations are vmapped over keys. p = (k + 1) / (n + 1) with k the permutations whose
    difference mean(x') - mean(y') is at least the observed one.
    """
    x, y = jnp.asarray(x, jnp.float32).ravel(), jnp.asarray(y, jnp.float32).ravel()
    if x.size == 0 or y.size == 0:
        raise DriftJaxError("permutation_test needs non-empty samples.")
    pooled = jnp.concatenate([x, y])
    nx = x.size
    observed = x.mean() - y.mean()

    def statistic(k):
        perm = jax.random.permutation(k, pooled)
        return perm[:nx].mean() - perm[nx:].mean()

    null = jax.jit(jax.vmap(statistic))(jax.random.split(key, num_permutations))
    k = int(jnp.sum(null >= observed - 1e-12))
    return {"statistic": float(observed), "p_value": (k + 1) / (num_permutations + 1)}
