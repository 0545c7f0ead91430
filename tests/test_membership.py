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


def _context(overfit, shadows=None, fit=500, key=0):
    ds, spec, target, members, nonmembers, _ = overfit
    return membership.AttackContext(spec, target, ds.images, ds.labels, members[:fit],
                                    nonmembers[:fit], jax.random.key(key), shadows)


def _auc(attack, ds, members, nonmembers):
    ix = np.concatenate([members, nonmembers])
    scores = attack.score(ds.images[ix], ds.labels[ix]).probability
    truth = np.arange(len(ix)) < len(members)
    return membership.attack_metrics(scores, truth)["auc"]


@pytest.fixture(scope="module")
def shadows(overfit):
    ds, spec, *_, pool = overfit
    return membership.train_shadows(spec, ds.images, ds.labels, pool, 4, RECIPE,
                                    jax.random.key(0))


def test_rule_based_is_a_direct_argmax(overfit):
    ds, spec, target, members, _, _ = overfit
    scores = membership.RuleBased().fit(_context(overfit)).score(ds.images[:50], ds.labels[:50])
    logits = stack.predict_stack(spec, target, ds.images[:50].astype(np.float32) / 255)[0]
    np.testing.assert_array_equal(scores.decision, np.asarray(logits).argmax(-1) == ds.labels[:50])
    assert scores.summary()["member_fraction"] == scores.decision.mean()


def test_black_box_beats_chance_on_fresh_members(overfit):
    ds, _, _, members, nonmembers, _ = overfit
    attack = membership.BlackBox().fit(_context(overfit))
    assert _auc(attack, ds, members[500:], nonmembers[500:]) > 0.6


@pytest.mark.slow
def test_shadow_attack_beats_chance(overfit, shadows):
    ds, _, _, members, nonmembers, _ = overfit
    attack = membership.ShadowModels().fit(_context(overfit, shadows))
    assert _auc(attack, ds, members, nonmembers) > 0.6


@pytest.mark.slow
def test_per_class_shadow_attack_models_route_each_class_to_its_own_model(overfit, shadows):
    ds, *_ = overfit
    attack = membership.ShadowModels(per_class=True).fit(_context(overfit, shadows))
    assert jax.tree.leaves(attack.models.params)[0].shape[0] == 10  # one model per class
    x, y = ds.images[:60], ds.labels[:60]
    scores = attack.score(x, y).probability
    # Each image's score is what the model of its own class says, and no other's.
    logits = stack.predict(attack.context.spec, attack.context.targets, x)
    features = np.repeat(membership.black_box.output_features(logits, "probability"), 10, 0)
    every = attack.models.probability(features, np.repeat(y[None], 10, 0))  # [classes, n]
    np.testing.assert_allclose(scores, every[y, np.arange(len(y))], atol=1e-5)
    assert not np.allclose(scores, every[(y + 1) % 10, np.arange(len(y))])


def test_a_learned_attack_needs_its_shadows(overfit):
    with pytest.raises(DriftJaxError, match="needs shadow models"):
        membership.LiRA().fit(_context(overfit))
    with pytest.raises(DriftJaxError, match="before scoring"):
        membership.BlackBox().score(overfit[0].images[:2], overfit[0].labels[:2])


@pytest.mark.slow
def test_lira_separates_members_online_offline_and_through_score(overfit):
    ds, spec, target, members, nonmembers, _ = overfit
    pool = np.concatenate([members[:300], nonmembers[:300]])
    lira_shadows = membership.train_shadows(spec, ds.images, ds.labels, pool, 8, RECIPE,
                                            jax.random.key(0))
    attack = membership.LiRA().fit(_context(overfit, lira_shadows))
    truth = np.arange(len(pool)) < 300
    online, offline = attack.score_pool("online")[0], attack.score_pool("offline")[0]
    assert membership.attack_metrics(online, truth)["auc"] > 0.7
    assert membership.attack_metrics(offline, truth)["auc"] > 0.6
    # `score` (offline: no shadow trained on what it scores) on the target's members vs fresh
    # non-members, as gray data arrives (floats in [0, 1]).
    fresh = np.concatenate([members[300:600], nonmembers[300:600]])
    scores = attack.score(ds.images[fresh].astype(np.float32) / 255, ds.labels[fresh])
    assert ((scores.probability >= 0) & (scores.probability <= 1)).all()
    assert membership.attack_metrics(scores.probability, truth)["auc"] > 0.6


@pytest.mark.slow
def test_attacks_on_a_stack_of_targets_equal_each_target_alone(overfit):
    """T targets at once (the seeds of a run) give each target the scores it gets alone."""
    ds, spec, target, members, nonmembers, pool = overfit
    other = stack.train_stack(spec, stack.init_stack(spec, jax.random.split(jax.random.key(7), 1)),
                              ds.images, ds.labels, [pool], RECIPE, jax.random.key(8),
                              progress=False).variables
    both = jax.tree.map(lambda a, b: np.concatenate([a, b]), target, other)
    rows = np.stack([members[:200], pool[:200]]), np.stack([nonmembers[:200], nonmembers[:200]])
    keys = jax.random.split(jax.random.key(0), 2)
    ctx = membership.AttackContext(spec, both, ds.images, ds.labels, *rows, keys)
    x = np.stack([ds.images[:30], ds.images[30:60]])
    y = np.stack([ds.labels[:30], ds.labels[30:60]])
    for name in ("rule_based", "black_box"):
        together = membership.ATTACKS[name]().fit(ctx).score(x, y).probability
        for t, single in enumerate((target, other)):
            alone_ctx = membership.AttackContext(spec, single, ds.images, ds.labels, rows[0][t],
                                                 rows[1][t], keys[t:t + 1])
            alone = membership.ATTACKS[name]().fit(alone_ctx).score(x[t], y[t]).probability
            # Batched kernels round differently, and early stopping on the validation loss can
            # pick another epoch from such a difference: learned scores agree to 0.02.
            np.testing.assert_allclose(together[t], alone, atol=0 if name == "rule_based" else 0.02)
        assert not np.allclose(together[0], together[1], atol=0.02)


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
    ds = overfit[0]
    runs = [membership.BlackBox().fit(_context(overfit, fit=100, key=3)).score(
        ds.images[:40], ds.labels[:40]) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].probability, runs[1].probability)


def test_bad_scoring_input(overfit):
    ds = overfit[0]
    attack = membership.RuleBased().fit(_context(overfit))
    with pytest.raises(DriftJaxError, match="must have shape"):
        attack.score(ds.images[:5, :4], ds.labels[:5])
    with pytest.raises(DriftJaxError, match="NaN or Inf"):
        attack.score(np.full((2, 8, 8, 1), np.nan, np.float32), ds.labels[:2])
    with pytest.raises(DriftJaxError, match="labels must lie in 0..9"):
        attack.score(ds.images[:2], np.array([0, 12]))


def test_output_metrics_match_their_definitions():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4)) * 3
    labels = np.array([0, 1, 2, 3, 1])
    got = membership.output_metrics(logits, labels)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for i, y in enumerate(labels):
        others = [k for k in range(4) if k != y]
        mentr = -(1 - p[i, y]) * np.log(p[i, y]) - sum(p[i, k] * np.log(1 - p[i, k])
                                                        for k in others)
        np.testing.assert_allclose(got["target_probability"][i], p[i, y], rtol=1e-10)
        np.testing.assert_allclose(got["loss"][i], -np.log(p[i, y]), rtol=1e-10)
        np.testing.assert_allclose(got["logit_margin"][i],
                                   logits[i, y] - logits[i, others].max(), rtol=1e-10)
        np.testing.assert_allclose(got["modified_entropy"][i], mentr, rtol=1e-10)


@pytest.mark.parametrize("name", ["loss", "confidence", "modified_entropy"])
def test_metric_attacks_separate_fresh_members(overfit, name):
    ds, _, _, members, nonmembers, _ = overfit
    attack = membership.ATTACKS[name]().fit(_context(overfit))
    assert _auc(attack, ds, members[500:], nonmembers[500:]) > 0.75
    x, y = ds.images[members[500:560]], ds.labels[members[500:560]]
    scores = attack.score(x, y)
    thresholds = attack.thresholds[0, y]
    np.testing.assert_array_equal(scores.decision, scores.probability >= thresholds)
    assert set(scores.scores) == {attack.metric}


def test_rule_based_exposes_continuous_scores(overfit):
    ds, spec, target, *_ = overfit
    scores = membership.RuleBased().fit(_context(overfit)).score(ds.images[:20], ds.labels[:20])
    logits = stack.predict(spec, target, ds.images[:20])[0].astype(np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(scores.scores["target_probability"],
                               p[np.arange(20), ds.labels[:20]], rtol=1e-5)
    assert set(scores.scores) == {"target_probability", "loss", "logit_margin"}
