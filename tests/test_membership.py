import jax
import numpy as np
import pytest
from scipy import stats

from drift_jax import data, membership, stack
from drift_jax.config import TrainConfig
from drift_jax.errors import DriftJaxError
from drift_jax.membership import lira
from drift_jax.models import ModelSpec

RECIPE = TrainConfig(epochs=40, batch_size=32)


@pytest.fixture(scope="module")
def overfit():
    """A SeedCNN overfit on 1,000 noisy synthetic images (members: train accuracy 1.0, held-out
    ~0.5); 1,000 others are non-members; the rest is a shadow pool from the same distribution."""
    ds = data.synthetic(n=3000, classes=10, size=8, noise=1.0, seed=0)
    order = np.random.default_rng(0).permutation(len(ds))
    members, nonmembers, pool = order[:1000], order[1000:2000], order[2000:]
    spec = ModelSpec("seedcnn", 10, ds.image_shape)
    v = stack.init_stack(spec, jax.random.split(jax.random.key(0), 1))
    target = stack.train_stack(spec, v, ds.images, ds.labels, [members], RECIPE,
                               jax.random.key(1), progress=False).variables
    return ds, spec, target, members, nonmembers, pool


def _auc(attack, ds, members, nonmembers):
    ix = np.concatenate([members, nonmembers])
    scores = attack.score(ds.images[ix], ds.labels[ix]).probability
    truth = np.arange(len(ix)) < len(members)
    return membership.attack_metrics(scores, truth)["auc"]


def test_rule_based_is_a_direct_argmax(overfit):
    ds, spec, target, members, _, _ = overfit
    scores = membership.RuleBased(spec, target).score(ds.images[:50], ds.labels[:50])
    logits = stack.predict_stack(spec, target, ds.images[:50].astype(np.float32) / 255)[0]
    np.testing.assert_array_equal(scores.decision, np.asarray(logits).argmax(-1) == ds.labels[:50])
    assert scores.summary()["member_fraction"] == scores.decision.mean()


def test_black_box_beats_chance_on_fresh_members(overfit):
    ds, spec, target, members, nonmembers, _ = overfit
    attack = membership.BlackBox(spec, target).fit(
        ds.images[members[:500]], ds.labels[members[:500]], ds.images[nonmembers[:500]],
        ds.labels[nonmembers[:500]], jax.random.key(0))
    assert _auc(attack, ds, members[500:], nonmembers[500:]) > 0.6


def test_shadow_attack_beats_chance(overfit):
    ds, spec, target, members, nonmembers, pool = overfit
    attack = membership.ShadowModels(spec, target, num_shadows=4, train=RECIPE).fit(
        ds.images[pool], ds.labels[pool], jax.random.key(0))
    assert _auc(attack, ds, members, nonmembers) > 0.6


def test_per_class_shadow_attack_models(overfit):
    ds, spec, target, members, nonmembers, pool = overfit
    attack = membership.ShadowModels(spec, target, num_shadows=2, per_class=True,
                                     train=TrainConfig(epochs=2, batch_size=32)).fit(
        ds.images[pool[:400]], ds.labels[pool[:400]], jax.random.key(0))
    assert jax.tree.leaves(attack.models.params)[0].shape[0] == 10  # one model per class
    scores = attack.score(ds.images[:30], ds.labels[:30])
    assert scores.probability.shape == (30,)


def test_lira_online_separates_members(overfit):
    ds, spec, target, members, nonmembers, _ = overfit
    pool = np.concatenate([members[:300], nonmembers[:300]])
    members = members[:300]
    attack = membership.LiRA(spec, target, num_shadows=8, train=RECIPE).fit(
        ds.images[pool], ds.labels[pool], jax.random.key(0))
    truth = np.arange(len(pool)) < len(members)
    online = attack.score_pool(ds.images[pool], ds.labels[pool], "online")
    offline = attack.score_pool(ds.images[pool], ds.labels[pool], "offline")
    assert membership.attack_metrics(online, truth)["auc"] > 0.7
    assert membership.attack_metrics(offline, truth)["auc"] > 0.6
    gray_like = attack.score(ds.images[pool[:20]].astype(np.float32) / 255, ds.labels[pool[:20]])
    assert gray_like.probability.shape == (20,)
    assert ((gray_like.probability >= 0) & (gray_like.probability <= 1)).all()


def test_keep_matrix_is_balanced():
    keep = membership.balanced_keep(16, 1000, jax.random.key(0))
    assert keep.shape == (16, 1000)
    np.testing.assert_array_equal(keep.sum(0), 8)  # every example IN for exactly half
    assert abs(keep.sum(1).mean() - 500) < 1e-9 and keep.sum(1).min() > 400
    with pytest.raises(DriftJaxError, match="even number"):
        membership.balanced_keep(5, 10, jax.random.key(0))


def test_lira_ratios_match_scipy_directly():
    rng = np.random.default_rng(0)
    k, n = 8, 30
    keep = membership.balanced_keep(k, n, jax.random.key(1))
    shadow = rng.normal(size=(k, n, 2)) + keep[..., None] * 1.5
    target = rng.normal(size=(n, 2))
    ours = lira.online_scores(target, shadow, keep)
    ours_off = lira.offline_scores(target, shadow, fix_variance=True)
    pooled = shadow.std(axis=(0, 1))
    for i in range(n):
        ins, outs = shadow[keep[:, i], i], shadow[~keep[:, i], i]
        expected = np.mean([
            stats.norm.logpdf(target[i, a], np.median(ins[:, a]), ins[:, a].std())
            - stats.norm.logpdf(target[i, a], np.median(outs[:, a]), outs[:, a].std())
            for a in range(2)])
        np.testing.assert_allclose(ours[i], expected, rtol=1e-9)
        expected_off = np.mean([stats.norm.cdf(target[i, a], np.median(shadow[:, i, a]),
                                               pooled[a]) for a in range(2)])
        np.testing.assert_allclose(ours_off[i], expected_off, rtol=1e-9)


def test_lira_statistic_is_stable_in_float64():
    logits = np.array([[30.0, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    phi = membership.lira_statistic(logits, np.array([0, 1]))
    np.testing.assert_allclose(phi[0], 30.0 - np.log(2.0), rtol=1e-12)
    np.testing.assert_allclose(phi[1], -np.log(2.0), rtol=1e-12)


def test_attacks_are_deterministic_per_seed(overfit):
    ds, spec, target, members, nonmembers, _ = overfit
    runs = [membership.BlackBox(spec, target).fit(
        ds.images[members[:100]], ds.labels[members[:100]], ds.images[nonmembers[:100]],
        ds.labels[nonmembers[:100]], jax.random.key(3)).score(ds.images[:40], ds.labels[:40])
        for _ in range(2)]
    np.testing.assert_array_equal(runs[0].probability, runs[1].probability)


def test_bad_scoring_input(overfit):
    ds, spec, target, *_ = overfit
    attack = membership.RuleBased(spec, target)
    with pytest.raises(DriftJaxError, match="must have shape"):
        attack.score(ds.images[:5, :4], ds.labels[:5])
    with pytest.raises(DriftJaxError, match="NaN or Inf"):
        attack.score(np.full((2, 8, 8, 1), np.nan, np.float32), ds.labels[:2])
    with pytest.raises(DriftJaxError, match="labels must lie in 0..9"):
        attack.score(ds.images[:2], np.array([0, 12]))
