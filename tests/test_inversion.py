import sys

import jax
import numpy as np
import pytest
from conftest import ROOT

from drift_jax import data, inversion, stack
from drift_jax.config import ExecutionConfig, TrainConfig
from drift_jax.errors import DriftJaxError
from drift_jax.inversion import InversionConfig, MIFaceConfig, RegularizedConfig
from drift_jax.models import ModelSpec

sys.path.insert(0, str(ROOT / "scripts"))
import miface_reference  # noqa: E402


@pytest.fixture(scope="module")
def digits_models():
    """Two SeedCNNs trained on digits (different seeds, same data)."""
    ds = data.digits()
    train_ix, hold_ix = data.stratified_split(ds.labels, [0.8, 0.2], seed=0)
    spec = ModelSpec("seedcnn", 10, ds.image_shape)
    v = stack.init_stack(spec, jax.random.split(jax.random.key(0), 3))
    result = stack.train_stack(spec, v, ds.images, ds.labels, [train_ix] * 3,
                               TrainConfig(epochs=8), jax.random.key(1), progress=False)
    return ds, spec, result.variables


def _miface(max_iter, early_stop="none", samples=1, **kw):
    return InversionConfig(method="miface", samples_per_class=samples,
                           miface=MIFaceConfig(max_iter=max_iter, early_stop=early_stop, **kw))


@pytest.mark.parametrize("early_stop", ["none", "art"])
def test_miface_matches_the_art_reference_loop(digits_models, early_stop):
    _, spec, variables = digits_models
    pair = stack.member(variables, slice(0, 2))
    gray = inversion.invert(spec, pair, range(10), _miface(50, early_stop),
                            jax.random.key(0), progress=False)
    module = spec.build()
    for m in range(2):
        v = stack.member(pair, m)
        fns = miface_reference.make_fns(lambda x, v=v: module.apply(v, x))
        for c in range(10):
            ref, steps = miface_reference.miface_one(
                fns, np.zeros(spec.image_shape), c, max_iter=50,
                early_stop=early_stop == "art")
            np.testing.assert_allclose(gray.images[m, c, 0], ref, atol=2e-5)
            assert gray.active_steps[m, c, 0] == steps


def test_art_mask_drops_unlikely_classes_after_one_step(digits_models):
    _, spec, variables = digits_models
    pair = stack.member(variables, slice(0, 2))
    art = inversion.invert(spec, pair, range(10), _miface(300, "art"), jax.random.key(0),
                           progress=False)
    full = inversion.invert(spec, pair, range(10), _miface(300), jax.random.key(0),
                            progress=False)
    dropped = art.active_steps == 1
    assert (art.active_steps[~dropped] == 300).all()  # the rest run to max_iter
    assert (full.active_steps == 300).all()
    # A dropped image stays near its zero start; the fixed-length run moved it further.
    if dropped.any():
        moved_art = np.abs(art.images[dropped]).mean()
        moved_full = np.abs(full.images[dropped]).mean()
        assert moved_art < moved_full


def test_miface_gray_data_is_recognised_by_its_model(digits_models):
    _, spec, variables = digits_models
    gray = inversion.invert(spec, stack.member(variables, slice(0, 1)), range(10),
                            _miface(300, init="grey"), jax.random.key(0), progress=False)
    assert gray.images.shape == (1, 10, 1, 8, 8, 1)
    assert gray.images.min() >= 0 and gray.images.max() <= 1
    assert (gray.confidence > 0.9).mean() >= 0.9


def test_regularized_transfers_to_an_independent_model(digits_models):
    _, spec, variables = digits_models
    cfg = InversionConfig(method="regularized", samples_per_class=4,
                          regularized=RegularizedConfig(steps=200, learning_rate=0.1, jitter=1))
    gray = inversion.invert(spec, stack.member(variables, slice(0, 2)), range(10), cfg,
                            jax.random.key(0), progress=False)
    assert gray.images.shape == (2, 10, 4, 8, 8, 1)
    rate = inversion.transfer_rate(spec, stack.member(variables, slice(2, 3)), gray)
    assert rate.shape == (1, 2)
    assert rate.mean() > 0.5  # chance is 0.1


def test_one_compile_per_shape_and_strategies_agree(digits_models):
    _, spec, variables = digits_models
    pair = stack.member(variables, slice(0, 2))
    results = {}
    for mode in ("map", "vmap"):
        cfg = InversionConfig(samples_per_class=2, miface=MIFaceConfig(max_iter=40, init="grey"),
                              execution=ExecutionConfig(member_mode=mode, scan_chunk=8))
        first = inversion.invert(spec, pair, range(10), cfg, jax.random.key(0), progress=False)
        again = inversion.invert(spec, pair, range(10), cfg, jax.random.key(1), progress=False)
        assert again.compiles == 0  # 5 chunks, a second call: all cached
        results[mode] = first.images
    np.testing.assert_allclose(results["map"], results["vmap"], atol=1e-5)


def test_regularized_matches_batch_statistics_on_resnet():
    ds = data.synthetic(n=200, classes=4, size=8, channels=3)
    spec = ModelSpec("resnet", 4, ds.image_shape)
    v = stack.init_stack(spec, jax.random.split(jax.random.key(0), 1))
    trained = stack.train_stack(spec, v, ds.images, ds.labels, [np.arange(200)],
                                TrainConfig(epochs=3, batch_size=32), jax.random.key(1),
                                progress=False).variables
    cfg = InversionConfig(method="regularized", samples_per_class=4,
                          regularized=RegularizedConfig(steps=60, bn_weight=1.0))
    gray = inversion.invert(spec, trained, range(4), cfg, jax.random.key(0), progress=False)
    assert np.isfinite(gray.images).all() and gray.trace[0, -1] < gray.trace[0, 0]


def test_gray_data_round_trip(tmp_path, digits_models):
    _, spec, variables = digits_models
    gray = inversion.invert(spec, stack.member(variables, slice(0, 1)), [3, 5], _miface(5),
                            jax.random.key(0), progress=False)
    gray.save(tmp_path / "g.npz")
    back = inversion.GrayData.load(tmp_path / "g.npz")
    np.testing.assert_array_equal(back.images, gray.images)
    np.testing.assert_array_equal(back.labels, gray.labels)


def test_bad_inversion_input(digits_models):
    _, spec, variables = digits_models
    one = stack.member(variables, slice(0, 1))
    with pytest.raises(DriftJaxError, match="classes must lie in 0..9"):
        inversion.invert(spec, one, [10], _miface(5), jax.random.key(0))
    with pytest.raises(DriftJaxError, match="no classes"):
        inversion.invert(spec, one, [], _miface(5), jax.random.key(0))
    with pytest.raises(DriftJaxError, match="needs the dataset's mean image"):
        inversion.invert(spec, one, [1], _miface(5, init="mean"), jax.random.key(0))


def test_zero_gradient_start_warns():
    spec = ModelSpec("seedcnn", 3, (8, 8, 1))
    v = stack.init_stack(spec, jax.random.split(jax.random.key(0), 1))
    v = jax.tree.map(lambda x: x * 0, v)  # a dead network: zero gradient everywhere
    with pytest.warns(UserWarning, match="zero gradient"):
        inversion.invert(spec, v, [0], _miface(2), jax.random.key(0), progress=False)


def test_paper_early_stop_stops_confident_samples(digits_models):
    _, spec, variables = digits_models
    one = stack.member(variables, slice(0, 1))
    gray = inversion.invert(spec, one, range(10), _miface(200, "paper", init="grey",
                                                          threshold=0.5),
                            jax.random.key(0), progress=False)
    # A sample stops once its cost 1 - p <= 0.5 (or stalls); none runs the full budget here.
    assert (gray.active_steps < 200).all()
    assert (gray.confidence >= 0.5).mean() >= 0.9


def test_cli_invert_writes_gray_data_and_grid(tmp_path, digits_models):
    from drift_jax import cli

    _, spec, variables = digits_models
    stack.save_stack(tmp_path / "ckpt", spec, stack.member(variables, slice(0, 2)))
    out = tmp_path / "inv"
    assert cli.main(["invert", "--checkpoint", str(tmp_path / "ckpt"), "--classes", "1,7",
                     "--samples", "2", "--iterations", "20", "--out", str(out), "--quiet"]) == 0
    gray = inversion.GrayData.load(out / "gray.npz")
    assert gray.images.shape == (2, 2, 2, 8, 8, 1) and gray.classes.tolist() == [1, 7]
    assert (out / "gray.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "summary.json").exists() and (out / "config.json").exists()
