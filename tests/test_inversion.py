import dataclasses

import jax
import jax.numpy as jnp
import miface_reference
import numpy as np
import pytest

from drift_jax import data, inversion, stack
from drift_jax.config import ExecutionConfig, TrainConfig
from drift_jax.errors import DriftJaxError
from drift_jax.inversion import InversionConfig, MIFaceConfig, RegularizedConfig
from drift_jax.models import ModelSpec


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
    """ART's inverted mask: a class under 1 % confidence after the first step from zeros is
    dropped and keeps that one step's image; the fixed-length run keeps going."""
    _, spec, variables = digits_models
    one = jax.tree.map(np.array, stack.member(variables, slice(0, 1)))
    one["params"]["Dense_1"]["bias"][0, 9] -= 12.0  # class 9: far under 1 % at the zeros start
    art = inversion.invert(spec, one, range(10), _miface(300, "art"), jax.random.key(0),
                           progress=False)
    full = inversion.invert(spec, one, range(10), _miface(300), jax.random.key(0),
                            progress=False)
    assert art.active_steps[0, 9, 0] == 1
    dropped = art.active_steps == 1
    assert (art.active_steps[~dropped] == 300).all()  # the rest run to max_iter
    assert (full.active_steps == 300).all()
    module = spec.build()
    fns = miface_reference.make_fns(lambda x: module.apply(stack.member(one, 0), x))
    once, _ = miface_reference.miface_one(fns, np.zeros(spec.image_shape), 9, max_iter=1,
                                          early_stop=False)
    np.testing.assert_allclose(art.images[0, 9, 0], once, atol=1e-6)
    assert np.abs(full.images[0, 9, 0]).sum() > np.abs(once).sum()  # kept on moving


def test_tied_pool_windows_send_the_gradient_to_one_element():
    """A window of equal values (a black MIFace start) passes its whole gradient to its first
    element in row-major order, as PyTorch's max_pool2d and flax's max_pool do; autodiff of a
    reshape-max would give each a quarter."""
    from drift_jax.layers import max_pool_2x2

    x = jnp.zeros((1, 4, 4, 1)).at[0, 2, 3, 0].set(1.0)  # three tied windows, one clear max
    g = jax.grad(lambda x: max_pool_2x2(x).sum())(x)[0, :, :, 0]
    expected = np.zeros((4, 4))
    expected[0, 0] = expected[0, 2] = expected[2, 0] = 1.0  # first of each tied window
    expected[2, 3] = 1.0
    np.testing.assert_array_equal(g, expected)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 3, (2, 7, 9, 3)), jnp.float32)  # odd sizes, many ties
    w = jnp.asarray(rng.normal(size=(2, 3, 4, 3)), jnp.float32)
    ours = jax.grad(lambda x: (max_pool_2x2(x) * w).sum())(x)
    flax_pool = jax.grad(lambda x: (max_pool_2x2(x, "flax") * w).sum())(x)
    np.testing.assert_array_equal(ours, flax_pool)


def test_miface_parity_with_ibm_art_on_a_pytorch_model():
    """ART MIFace and `method='miface'` from the same zeros start on one PyTorch SeedCNN copied
    into drift_jax: the same images to ART's float32 noise (needs the `bench` extra)."""
    torch = pytest.importorskip("torch")
    art_mi = pytest.importorskip("art.attacks.inference.model_inversion")
    from art.estimators.classification import PyTorchClassifier

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64 * 2 * 2, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 10))
    conv = lambda m: {"kernel": m.weight.detach().numpy().transpose(2, 3, 1, 0),
                      "bias": m.bias.detach().numpy()}
    dense = lambda m, perm=None: {"kernel": (m.weight.detach().numpy().T if perm is None else
                                             m.weight.detach().numpy().T[perm]),
                                  "bias": m.bias.detach().numpy()}
    # torch flattens NCHW, flax NHWC: permute Dense_0's input rows to match.
    perm = np.arange(64 * 2 * 2).reshape(64, 2, 2).transpose(1, 2, 0).reshape(-1)
    params = {"Conv_0": conv(net[0]), "Conv_1": conv(net[3]), "Dense_0": dense(net[7], perm),
              "Dense_1": dense(net[9])}
    variables = jax.tree.map(lambda a: jnp.asarray(a)[None], {"params": params})
    spec = ModelSpec("seedcnn", 10, (8, 8, 1))
    x = np.random.default_rng(0).random((4, 8, 8, 1), np.float32)
    ours_logits = stack.predict(spec, variables, x)[0]
    theirs_logits = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
    np.testing.assert_allclose(ours_logits, theirs_logits, atol=1e-4)
    classifier = PyTorchClassifier(torch.nn.Sequential(net, torch.nn.Softmax(dim=1)),
                                   torch.nn.CrossEntropyLoss(), (1, 8, 8), 10,
                                   clip_values=(0.0, 1.0))
    art_images = art_mi.MIFace(classifier, max_iter=50, threshold=1.0, batch_size=1,
                               verbose=False).infer(np.zeros((10, 1, 8, 8), np.float32),
                                                    np.arange(10))
    gray = inversion.invert(spec, variables, range(10), _miface(50), jax.random.key(0),
                            progress=False)
    np.testing.assert_allclose(gray.images[0, :, 0], art_images.transpose(0, 2, 3, 1),
                               atol=1e-4)


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


def test_batch_statistics_term_equals_a_direct_computation():
    """The regularised loss's BN term, recovered from the running-statistics update, equals
    sum over BN layers of ||batch mean - running mean|| + ||batch var - running var||, with the
    batch statistics computed directly from each BN layer's input (the conv before it)."""
    import flax

    ds = data.synthetic(n=200, classes=4, size=8, channels=3)
    spec = ModelSpec("resnet", 4, ds.image_shape)
    v = stack.init_stack(spec, jax.random.split(jax.random.key(0), 1))
    trained = stack.member(stack.train_stack(
        spec, v, ds.images, ds.labels, [np.arange(200)], TrainConfig(epochs=3, batch_size=32),
        jax.random.key(1), progress=False).variables, 0)
    module = spec.build()
    x = jax.random.uniform(jax.random.key(2), (6, *spec.image_shape))
    _, ours = inversion._batch_statistics_loss(module, trained, x)
    _, state = module.apply(trained, x, train=True, mutable=["intermediates", "batch_stats"],
                            capture_intermediates=lambda mdl, _: type(mdl).__name__ == "Conv")
    convs = flax.traverse_util.flatten_dict(state["intermediates"])
    running = flax.traverse_util.flatten_dict(trained["batch_stats"])
    direct = 0.0
    for path in {p[:-1] for p in running}:  # each BN layer: BatchNorm_k is fed by Conv_k
        feed = convs[(*path[:-1], path[-1].replace("BatchNorm", "Conv"), "__call__")][0]
        direct += np.linalg.norm(feed.mean((0, 1, 2)) - running[(*path, "mean")])
        direct += np.linalg.norm(feed.var((0, 1, 2)) - running[(*path, "var")])
    assert len({p[:-1] for p in running}) == 9  # stem + 3 blocks x 2 + 2 shortcuts
    np.testing.assert_allclose(ours, direct, rtol=1e-4)


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


def test_the_loop_ends_once_every_image_of_the_stack_has_stopped(digits_models):
    """With early stopping, chunks after the last image stopped are not run, and the images
    are those of a run whose budget ends there."""
    _, spec, variables = digits_models
    execution = ExecutionConfig(scan_chunk=10)

    def run(max_iter):
        cfg = _miface(max_iter, "paper", samples=2, init="grey", threshold=0.5)
        return inversion.invert(spec, variables, range(10), dataclasses.replace(
            cfg, execution=execution), jax.random.key(0), progress=False)

    long = run(5000)
    chunks = long.trace.shape[1]
    assert chunks < 500 and long.active_steps.max() <= chunks * 10
    np.testing.assert_array_equal(long.images, run(chunks * 10).images)


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
