"""The decision statistics of METHOD.md ("Deciding drift: a test, not <<").

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


@functools.partial(jax.jit, static_argnums=(3,))
def _permutation_null(pooled, nx, key, num_permutations):
    in_x = jnp.arange(pooled.size) < nx
    ny = pooled.size - nx

    def statistic(k):
        perm = jax.random.permutation(k, pooled)
        return jnp.sum(jnp.where(in_x, perm, 0)) / nx - jnp.sum(jnp.where(in_x, 0, perm)) / ny

    return jax.vmap(statistic)(jax.random.split(key, num_permutations))


def permutation_test(x, y, key: jax.Array, num_permutations: int = 2000) -> dict:
    """One-sided test that mean(y) < mean(x), by relabelling the pooled samples.

    Permutations are vmapped over keys (one compile per pooled size). p = (k + 1) / (n + 1) with
    k the permutations whose difference mean(x') - mean(y') is at least the observed one.
    """
    x, y = np.asarray(x, np.float32).ravel(), np.asarray(y, np.float32).ravel()
    if x.size == 0 or y.size == 0:
        raise DriftJaxError("permutation_test needs non-empty samples.")
    observed = float(x.mean() - y.mean())
    null = _permutation_null(jnp.asarray(np.concatenate([x, y])), x.size, key, num_permutations)
    k = int(np.sum(np.asarray(null) >= observed - 1e-6))
    return {"statistic": observed, "p_value": (k + 1) / (num_permutations + 1)}
