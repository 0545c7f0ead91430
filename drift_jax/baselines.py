"""Baselines on the same splits and controls (docs/METHOD.md, "Baselines").

* model disagreement: agreement of base and production predictions on held-out base data,
  calibrated by the control models (needs no production data);
* BBSD (Rabanser et al. 2019, "Failing Loudly"): KS tests on the base model's softmax outputs,
  held-out base vs production inputs, Bonferroni over classes;
* MMD: Gaussian kernel, median-heuristic bandwidth, permutation test vmapped over permutations,
  the kernel matrix computed in row blocks so 10k + 10k samples fit.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats as sp_stats

from drift_jax import validate
from drift_jax.errors import DriftJaxError
from drift_jax.stats import calibrated_p_value


def disagreement(predictions: np.ndarray, production: int, controls: np.ndarray):
    """predictions: int [..., N, n] of stacks whose member 0 is the base model, on held-out data
    (leading axes, e.g. seeds, at once).

    Low agreement with the base model is evidence of drift: p = calibrated p-value of the
    production model's agreement among the controls' agreements. Returns a dict, or a list of
    them for leading axes.
    """
    predictions = np.asarray(predictions)
    agree = (predictions == predictions[..., :1, :]).mean(-1)  # [..., N]; the base's own is 1
    flat = agree.reshape(-1, agree.shape[-1])
    p = calibrated_p_value(flat[:, controls].T, flat[:, production])
    result = [{"agreement": float(a[production]), "control_agreement": a[controls].tolist(),
               "p_value": float(q)} for a, q in zip(flat, p)]
    return result if predictions.ndim > 2 else result[0]


def bbsd(base_softmax: np.ndarray, production_softmax: np.ndarray):
    """KS test per class on softmax outputs, Bonferroni over classes.

    base_softmax [..., n, C] on held-out base data, production_softmax [..., m, C] (leading axes,
    e.g. seeds, are tested at once) -> {"per_class_p", "p_value"} (a list of them for leading
    axes)."""
    base_softmax, production_softmax = np.asarray(base_softmax), np.asarray(production_softmax)
    if base_softmax.shape[-2] < 2 or production_softmax.shape[-2] < 2:
        raise DriftJaxError("BBSD needs at least 2 samples on each side.")
    p = np.asarray(sp_stats.ks_2samp(base_softmax, production_softmax, axis=-2).pvalue)
    result = [{"per_class_p": row.tolist(), "p_value": float(min(1.0, row.min() * row.size))}
              for row in p.reshape(-1, p.shape[-1])]
    return result if p.ndim > 1 else result[0]


def _sq_dists(a, b):
    return jnp.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0.0)


@functools.partial(jax.jit, static_argnames=("num_permutations", "block"))
def _mmd_program(x, y, key, num_permutations: int, block: int):
    """Biased MMD^2 of x [n, D] vs y [m, D] and of ``num_permutations`` relabellings -> [P + 1].

    All permutations share each kernel block: the statistic a^T K a for the signed weight
    vectors a (+1/n on one side, -1/m on the other) of the observed split and of every
    permutation is accumulated block row by block row, K never held whole."""
    z = jnp.concatenate([x, y]).astype(jnp.float32)
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

    def one_block(i):
        rows = jax.lax.dynamic_slice_in_dim(z_pad, i * block, block)
        k = jnp.exp(-_sq_dists(rows, z) / (2 * bandwidth))  # [block, total]
        w_rows = jax.lax.dynamic_slice_in_dim(w_pad, i * block, block, axis=1)
        return jnp.einsum("pb,bt,pt->p", w_rows, k, weights)

    return jax.lax.map(one_block, jnp.arange(z_pad.shape[0] // block)).sum(0), bandwidth


@functools.partial(jax.jit, static_argnames=("num_permutations", "block"))
def _mmd_seeds(x, y, keys, num_permutations: int, block: int):
    """x [S, n, ...] uint8 or float, y [S, m, ...], keys [S]: one test per seed, in turn."""
    def one(args):
        xs, ys, key = args
        flat = lambda a: a.reshape(a.shape[0], -1).astype(jnp.float32) / (
            255.0 if a.dtype == jnp.uint8 else 1.0)
        return _mmd_program(flat(xs), flat(ys), key, num_permutations, block)

    return jax.lax.map(one, (x, y, keys))


def mmd_tests(x, y, keys: jax.Array, num_permutations: int = 500, block: int = 1024) -> list:
    """Two-sample MMD^2 (biased) permutation tests, Gaussian kernel with the median-heuristic
    bandwidth, for S sample pairs at once: x [S, n, ...], y [S, m, ...] (uint8 images are scaled
    to [0, 1]; flattened inside), keys [S]. One compiled program per shape."""
    total = int(np.shape(x)[1] + np.shape(y)[1])
    validate.check_memory(12.0 * (num_permutations + 1) * total + 4.0 * (np.size(x) + np.size(y)),
                          f"an MMD test of {num_permutations} permutations on {total} samples",
                          "lower permutations")
    mmd2, bandwidth = _mmd_seeds(jnp.asarray(x), jnp.asarray(y), keys, num_permutations,
                                 min(block, int(np.shape(x)[1] + np.shape(y)[1])))
    mmd2, bandwidth = np.asarray(mmd2), np.asarray(bandwidth)
    return [{"mmd2": float(row[0]), "bandwidth": float(b),
             "p_value": float((1 + (row[1:] >= row[0]).sum()) / (num_permutations + 1))}
            for row, b in zip(mmd2, bandwidth)]


def mmd_test(x: np.ndarray, y: np.ndarray, key: jax.Array, num_permutations: int = 500,
             block: int = 1024) -> dict:
    """`mmd_tests` for one pair: x [n, ...], y [m, ...]."""
    return mmd_tests(np.asarray(x)[None], np.asarray(y)[None], key[None], num_permutations,
                     block)[0]
