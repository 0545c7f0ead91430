import jax
import jax.numpy as jnp
import pytest

from drift_jax.errors import DriftJaxError
from drift_jax.models import ModelSpec


def test_seedcnn_is_exactly_the_design_card():
    v = ModelSpec("seedcnn", 10, (32, 32, 3)).init(jax.random.key(0))
    shapes = jax.tree.map(lambda x: x.shape, v["params"])
    assert shapes == {
        "Conv_0": {"kernel": (3, 3, 3, 32), "bias": (32,)},
        "Conv_1": {"kernel": (3, 3, 32, 64), "bias": (64,)},
        "Dense_0": {"kernel": (8 * 8 * 64, 128), "bias": (128,)},
        "Dense_1": {"kernel": (128, 10), "bias": (10,)},
    }
    assert "batch_stats" not in v


@pytest.mark.parametrize("conv_form", ["canonical", "autodiff"])
def test_forms_give_the_same_function(conv_form):
    spec = ModelSpec("seedcnn", 10, (8, 8, 1))
    v = spec.init(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1))
    ref = spec.build().apply(v, x)
    other = ModelSpec("seedcnn", 10, (8, 8, 1), conv_form, "flax").build().apply(v, x)
    assert jnp.allclose(ref, other, atol=1e-5)


def test_resnet_has_batch_norm_and_updates_statistics():
    spec = ModelSpec("resnet", 10, (16, 16, 3))
    v = spec.init(jax.random.key(0))
    assert "batch_stats" in v
    x = jax.random.uniform(jax.random.key(1), (8, 16, 16, 3))
    logits, updates = spec.build().apply(v, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (8, 10)
    before = jax.tree.leaves(v["batch_stats"])[0]
    after = jax.tree.leaves(updates["batch_stats"])[0]
    assert not jnp.allclose(before, after)


def test_unknown_architecture():
    with pytest.raises(DriftJaxError, match="unknown architecture 'vgg'"):
        ModelSpec("vgg", 10, (8, 8, 1))
