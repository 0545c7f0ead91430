"""Baselines on the same splits and controls (METHOD.md "Baselines to compare against").

* model disagreement: agreement of base and production predictions on held-out base data,
  calibrated by the control models (needs no production data);
* BBSD (Rabanser et al. 2019, "Failing Loudly"): KS tests on the base model's softmax outputs,
  held-out base vs production inputs, Bonferroni over classes;
* MMD: Gaussian kernel, median-heuristic bandwidth, permutation test vmapped over permutations,
  the kernel matrix computed in row blocks so 10k + 10k samples fit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats as sp_stats

from drift_jax.errors import DriftJaxError
from drift_jax.stats import calibrated_p_value


def disagreement(predictions: np.ndarray, production: int, controls: np.ndarray) -> dict:
    """predictions: int [N, n] of a stack whose member 0 is the base model on held-out data.

    Low agreement with the base model is evidence of drift: p = calibrated p-value of the
    production model's agreement among the controls' agreements.
    """
    agree = (predictions[1:] == predictions[0]).mean(1)
    agree = np.concatenate([[1.0], agree])
    return {"agreement": float(agree[production]),
            "control_agreement": agree[controls].tolist(),
            "p_value": float(calibrated_p_value(agree[controls], agree[production]))}


def bbsd(base_softmax: np.ndarray, production_softmax: np.ndarray) -> dict:
    """base_softmax [n, C] on held-out base data, production_softmax [m, C] -> Bonferroni p."""
    if len(base_softmax) < 2 or len(production_softmax) < 2:
        raise DriftJaxError("BBSD needs at least 2 samples on each side.")
    p = np.array([sp_stats.ks_2samp(base_softmax[:, c], production_softmax[:, c]).pvalue
                  for c in range(base_softmax.shape[1])])
    return {"per_class_p": p.tolist(), "p_value": float(min(1.0, p.min() * len(p)))}


def _sq_dists(a, b):
    return jnp.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0.0)


def mmd_test(x: np.ndarray, y: np.ndarray, key: jax.Array, num_permutations: int = 500,
             block: int = 1024) -> dict:
    """Two-sample MMD^2 (biased) permutation test; x [n, ...], y [m, ...] (flattened inside).

    All permutations share each kernel block: the statistic a^T K a for the signed weight
    vectors a (+1/n on one side, -1/m on the other) of the observed split and of every
    permutation is accumulated block row by block row, K never held whole.
    """
    x = jnp.asarray(np.asarray(x, np.float32).reshape(len(x), -1))
    y = jnp.asarray(np.asarray(y, np.float32).reshape(len(y), -1))
    z = jnp.concatenate([x, y])
    n, total = x.shape[0], z.shape[0]
    sub = z[jax.random.permutation(jax.random.fold_in(key, 1), total)[:1000]]
    d = _sq_dists(sub, sub)
    bandwidth = jnp.median(d[jnp.triu_indices(d.shape[0], 1)])
    bandwidth = jnp.where(bandwidth > 0, bandwidth, 1.0)
    sign = jnp.where(jnp.arange(total) < n, 1.0 / n, -1.0 / (total - n))
    perms = jax.vmap(lambda k: jax.random.permutation(k, total))(
        jax.random.split(key, num_permutations))
    weights = jnp.concatenate([sign[None], sign[perms]])  # [P + 1, total]
    pad = (-total) % block
    z_pad = jnp.concatenate([z, jnp.zeros((pad, z.shape[1]))])
    w_pad = jnp.concatenate([weights, jnp.zeros((weights.shape[0], pad))], axis=1)

    @jax.jit
    def statistic(z_pad, w_pad):
        def one_block(i):
            rows = jax.lax.dynamic_slice_in_dim(z_pad, i * block, block)
            k = jnp.exp(-_sq_dists(rows, z) / (2 * bandwidth))  # [block, total]
            w_rows = jax.lax.dynamic_slice_in_dim(w_pad, i * block, block, axis=1)
            return jnp.einsum("pb,bt,pt->p", w_rows, k, weights)

        return jax.lax.map(one_block, jnp.arange(z_pad.shape[0] // block)).sum(0)

    mmd2 = np.asarray(statistic(z_pad, w_pad))
    observed, null = mmd2[0], mmd2[1:]
    return {"mmd2": float(observed), "bandwidth": float(bandwidth),
            "p_value": float((1 + (null >= observed).sum()) / (num_permutations + 1))}
