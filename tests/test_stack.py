import dataclasses
import json

import jax
import numpy as np
import pytest
from conftest import run_python

from drift_jax import data, execution, runtime, stack
from drift_jax.config import ExecutionConfig, TrainConfig
from drift_jax.errors import DriftJaxError
from drift_jax.models import ModelSpec


@pytest.fixture(scope="module")
def tiny():
    ds = data.synthetic(n=240, classes=4, size=8, seed=0)
    return ds, ModelSpec("seedcnn", ds.num_classes, ds.image_shape)


def _train(ds, spec, n=2, epochs=2, key=1, indices=None, **execution):
    v = stack.init_stack(spec, jax.random.split(jax.random.key(0), n))
    cfg = TrainConfig(epochs=epochs, batch_size=32, execution=ExecutionConfig(**execution))
    indices = indices if indices is not None else [np.arange(len(ds))] * n
    return stack.train_stack(spec, v, ds.images, ds.labels, indices, cfg, jax.random.key(key),
                             progress=False)


def test_init_stack_gives_independent_members(tiny):
    _, spec = tiny
    v = stack.init_stack(spec, jax.random.split(jax.random.key(0), 3))
    k = v["params"]["Conv_0"]["kernel"]
    assert k.shape == (3, 3, 3, 1, 32)
    assert not np.allclose(k[0], k[1])


def test_seedcnn_learns_digits():
    ds = data.digits()
    train_ix, hold_ix = data.stratified_split(ds.labels, [0.8, 0.2], seed=0)
    spec = ModelSpec("seedcnn", 10, ds.image_shape)
    v = stack.init_stack(spec, jax.random.split(jax.random.key(0), 1))
    result = stack.train_stack(spec, v, ds.images, ds.labels, [train_ix],
                               TrainConfig(epochs=10), jax.random.key(1), progress=False)
    ev = stack.evaluate_stack(spec, result.variables, ds.images[hold_ix], ds.labels[hold_ix])
    assert ev["accuracy"][0] >= 0.95


@pytest.mark.slow
def test_one_compile_per_run_whatever_the_length(tiny):
    ds, spec = tiny
    def fresh():
        stack._train_programs.cache_clear()
        jax.clear_caches()

    fresh()
    with runtime.CompileCounter() as short_total:
        short = _train(ds, spec, epochs=1, scan_chunk=2)
    fresh()
    with runtime.CompileCounter() as long_total:
        long = _train(ds, spec, epochs=4, scan_chunk=2)
    # The epoch schedule and the train chunk, each compiled once, for 1 or 4 epochs x 4 chunks;
    # setup programs (init, optimiser state) do not grow with the run either.
    assert short.compiles == long.compiles == 2
    assert short_total.count == long_total.count
    # Another run of the same shape (a new seed) reuses both programs.
    assert _train(ds, spec, epochs=4, scan_chunk=2, key=7).compiles == 0


def test_same_seed_bitwise_identical(tiny):
    ds, spec = tiny
    a, b = _train(ds, spec), _train(ds, spec)
    for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables)):
        np.testing.assert_array_equal(x, y)
    c = _train(ds, spec, key=2)
    assert not np.array_equal(jax.tree.leaves(a.variables)[0], jax.tree.leaves(c.variables)[0])


@pytest.mark.slow
def test_strategies_compute_the_same_training(tiny):
    ds, spec = tiny
    ref = _train(ds, spec, member_mode="map", scan_chunk=1, conv_form="autodiff", pool_form="flax")
    for options in [dict(member_mode="vmap", scan_chunk=8), dict(member_mode="map", scan_chunk=3),
                    dict(member_mode="loop", scan_chunk=4)]:
        other = _train(ds, spec, **options)
        for x, y in zip(jax.tree.leaves(ref.variables), jax.tree.leaves(other.variables)):
            np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)


def test_members_train_only_on_their_own_subset(tiny):
    ds, spec = tiny
    # Member 0 never sees class 3, member 1 sees everything.
    seen = np.flatnonzero(ds.labels != 3)
    result = _train(ds, spec, epochs=8, indices=[seen, np.arange(len(ds))])
    ev = stack.evaluate_stack(spec, result.variables, ds.images, ds.labels)
    per_class = np.asarray(ev["per_class_accuracy"])
    assert per_class[0, 3] == 0.0
    assert per_class[1, 3] > 0.5


def test_a_short_member_trains_as_it_would_alone(tiny):
    """Members of different sizes: the short one sits out the steps after its data is used up,
    so it ends where the same member trained alone (same init, same key) ends."""
    ds, spec = tiny
    init = stack.init_stack(spec, jax.random.split(jax.random.key(0), 2))
    keys = jax.random.split(jax.random.key(1), 2)
    cfg = TrainConfig(epochs=3, batch_size=32)
    both = stack.train_stack(spec, init, ds.images, ds.labels, [np.arange(40), np.arange(len(ds))],
                             cfg, keys, progress=False)
    alone = stack.train_stack(spec, stack.member(init, slice(0, 1)), ds.images, ds.labels,
                              [np.arange(40)], cfg, keys[:1], progress=False)
    for x, y in zip(jax.tree.leaves(stack.member(both.variables, slice(0, 1))),
                    jax.tree.leaves(alone.variables)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both.history["loss"][-1][0], alone.history["loss"][-1][0],
                               rtol=1e-5)


def test_evaluate_matches_a_direct_computation(tiny):
    ds, spec = tiny
    v = stack.init_stack(spec, jax.random.split(jax.random.key(5), 2))
    ev = stack.evaluate_stack(spec, v, ds.images, ds.labels, batch_size=64)  # padded last batch
    logits = stack.predict_stack(spec, v, ds.images.astype(np.float32) / 255)
    pred = np.asarray(logits).argmax(-1)
    np.testing.assert_allclose(ev["accuracy"], (pred == ds.labels).mean(1), rtol=1e-6)
    for c in range(ds.num_classes):
        m = ds.labels == c
        np.testing.assert_allclose(np.asarray(ev["per_class_accuracy"])[:, c],
                                   (pred[:, m] == c).mean(1), rtol=1e-6)


def test_bad_stack_inputs(tiny):
    ds, spec = tiny
    v = stack.init_stack(spec, jax.random.split(jax.random.key(0), 2))
    cfg = TrainConfig(epochs=1)
    with pytest.raises(DriftJaxError, match="3 index arrays for a stack of 2"):
        stack.train_stack(spec, v, ds.images, ds.labels, [np.arange(5)] * 3, cfg,
                          jax.random.key(0))
    with pytest.raises(DriftJaxError, match="member 1 has no training examples"):
        stack.train_stack(spec, v, ds.images, ds.labels, [np.arange(5), []], cfg,
                          jax.random.key(0))
    with pytest.raises(DriftJaxError, match="indexes outside the data"):
        stack.train_stack(spec, v, ds.images, ds.labels, [np.arange(5), [10_000]], cfg,
                          jax.random.key(0))
    with pytest.raises(DriftJaxError, match="the model expects"):
        stack.train_stack(spec, v, ds.images[:, :4, :4], ds.labels, [np.arange(5)] * 2, cfg,
                          jax.random.key(0))


def test_checkpoint_round_trip_and_wrong_architecture(tiny, tmp_path):
    ds, spec = tiny
    v = stack.init_stack(spec, jax.random.split(jax.random.key(0), 2))
    stack.save_stack(tmp_path / "ckpt", spec, v, {"note": "x"})
    spec2, v2, meta = stack.load_stack(tmp_path / "ckpt", expect=spec)
    assert spec2 == spec and meta == {"note": "x"}
    for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(v2)):
        np.testing.assert_array_equal(a, b)
    other = ModelSpec("resnet", spec.num_classes, spec.image_shape)
    with pytest.raises(DriftJaxError, match="holds seedcnn .* expected resnet"):
        stack.load_stack(tmp_path / "ckpt", expect=other)
    with pytest.raises(DriftJaxError, match="not a drift_jax checkpoint"):
        stack.load_stack(tmp_path)


@pytest.mark.slow
def test_resnet_stack_trains_with_batch_norm(tiny):
    ds, _ = tiny
    spec = ModelSpec("resnet", ds.num_classes, ds.image_shape)
    result = _train(ds, spec, epochs=3)
    before = stack.init_stack(spec, jax.random.split(jax.random.key(0), 2))
    assert not np.allclose(jax.tree.leaves(before["batch_stats"])[0],
                           jax.tree.leaves(result.variables["batch_stats"])[0])
    assert result.history["loss"][-1][0] < result.history["loss"][0][0]


MULTI_DEVICE = """
import json, jax, numpy as np
from drift_jax import data, stack
from drift_jax.config import TrainConfig
from drift_jax.models import ModelSpec
ds = data.synthetic(n=240, classes=4, size=8, seed=0)
out = {"devices": jax.device_count()}
for arch, n in [("seedcnn", 4), ("seedcnn", 2), ("resnet", 1)]:
    spec = ModelSpec(arch, 4, ds.image_shape)
    v = stack.init_stack(spec, jax.random.split(jax.random.key(0), n))
    r = stack.train_stack(spec, v, ds.images, ds.labels, [np.arange(240)] * n,
                          TrainConfig(epochs=2, batch_size=32), jax.random.key(1), progress=False)
    out[f"{arch}{n}"] = {"mesh": r.mesh["shape"],
                         "leaves": [np.asarray(x).tolist() for x in jax.tree.leaves(r.variables)]}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_one_and_four_virtual_devices_agree():
    single = json.loads(run_python(MULTI_DEVICE).splitlines()[-1])
    multi = json.loads(run_python(MULTI_DEVICE, {
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}).splitlines()[-1])
    assert single["devices"] == 1 and multi["devices"] == 4
    # 4 members: sharded over models; 2 members: 2 x 2 mesh; 1 ResNet: batch over 4 devices.
    assert multi["seedcnn4"]["mesh"] == {"models": 4, "data": 1}
    assert multi["seedcnn2"]["mesh"] == {"models": 2, "data": 2}
    assert multi["resnet1"]["mesh"] == {"models": 1, "data": 4}
    for key in ("seedcnn4", "seedcnn2", "resnet1"):
        for a, b in zip(single[key]["leaves"], multi[key]["leaves"]):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_execution_defaults_resolve_per_backend():
    cpu = execution.resolve_execution(ExecutionConfig(), "cpu")
    assert cpu == execution.EXECUTION_DEFAULTS["cpu"]
    forced = execution.resolve_execution(ExecutionConfig(member_mode="vmap", scan_chunk=3), "cpu")
    assert dataclasses.astuple(forced)[:2] == ("vmap", 3)
