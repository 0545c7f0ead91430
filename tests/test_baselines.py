import jax
import numpy as np

from drift_jax import baselines


def test_mmd_finds_a_shift_and_not_its_absence():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8))
    shifted = baselines.mmd_test(x, rng.normal(0.5, 1, (250, 8)), jax.random.key(0), 200, 128)
    same = baselines.mmd_test(x, rng.normal(size=(250, 8)), jax.random.key(0), 200, 128)
    assert shifted["p_value"] < 0.01 and same["p_value"] > 0.05


def test_mmd_blocks_do_not_change_the_statistic():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(100, 4)), rng.normal(0.3, 1, (90, 4))
    a = baselines.mmd_test(x, y, jax.random.key(0), 50, block=16)
    b = baselines.mmd_test(x, y, jax.random.key(0), 50, block=256)
    np.testing.assert_allclose(a["mmd2"], b["mmd2"], rtol=1e-4)
    assert a["p_value"] == b["p_value"]
    # Direct biased MMD^2 with the same bandwidth.
    z = np.concatenate([x, y])
    k = np.exp(-((z[:, None] - z[None]) ** 2).sum(-1) / (2 * a["bandwidth"]))
    w = np.concatenate([np.full(100, 1 / 100), np.full(90, -1 / 90)])
    np.testing.assert_allclose(a["mmd2"], w @ k @ w, rtol=1e-3)


def test_bbsd_sees_covariate_shift_on_outputs():
    rng = np.random.default_rng(0)
    base = rng.dirichlet(np.ones(5), 400)
    moved = rng.dirichlet(np.array([5, 1, 1, 1, 1.0]), 400)
    assert baselines.bbsd(base, moved)["p_value"] < 0.01
    assert baselines.bbsd(base, rng.dirichlet(np.ones(5), 400))["p_value"] > 0.05


def test_disagreement_is_calibrated_by_the_controls():
    base = np.zeros(100, int)
    preds = np.stack([base, base.copy(), *[base.copy() for _ in range(4)]])
    preds[1, :30] = 1  # production disagrees on 30 %
    for m in range(2, 6):
        preds[m, : m] = 1  # controls disagree a little
    result = baselines.disagreement(preds, 1, np.arange(2, 6))
    assert result["agreement"] == 0.7 and result["p_value"] == 1 / 5
