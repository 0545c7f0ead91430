import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drift_jax import layers


class Conv2dParity(chex.TestCase):
    """The canonical-form VJP is the same contraction as autodiff of lax.conv."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_gradients_match_autodiff(self):
        for shape, stride in [((4, 9, 9, 3), 1), ((2, 8, 8, 5), 2), ((3, 7, 7, 2), 2)]:
            kx, kw, kg = jax.random.split(jax.random.key(0), 3)
            x = jax.random.normal(kx, shape)
            w = jax.random.normal(kw, (3, 3, shape[-1], 6))
            g = jax.random.normal(kg, layers._conv(x, w, stride).shape)
            ours = self.variant(jax.vjp(lambda a, b, s=stride: layers.conv2d(a, b, s), x, w)[1])(g)
            ref = self.variant(jax.vjp(lambda a, b, s=stride: layers._conv(a, b, s), x, w)[1])(g)
            for a, b in zip(ours, ref):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)

    def test_gradient_inside_scan_matches(self):
        x = jax.random.normal(jax.random.key(1), (4, 4, 8, 8, 3))
        w = jax.random.normal(jax.random.key(2), (3, 3, 3, 4))

        def total(conv, w):
            return jax.lax.scan(lambda c, xi: (c + (conv(xi, w) ** 2).sum(), None), 0.0, x)[0]

        ours = jax.jit(jax.grad(lambda w: total(layers.conv2d, w)))(w)
        ref = jax.jit(jax.grad(lambda w: total(lambda a, b: layers._conv(a, b, 1), w)))(w)
        np.testing.assert_allclose(ours, ref, rtol=1e-5)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 7, 9, 1)])
def test_pool_forms_agree(shape):
    x = jax.random.normal(jax.random.key(0), shape)  # continuous: no ties
    a = layers.max_pool_2x2(x, "reshape")
    b = layers.max_pool_2x2(x, "flax")
    np.testing.assert_allclose(a, b)
    ga = jax.grad(lambda x: (layers.max_pool_2x2(x, "reshape") ** 2).sum())(x)
    gb = jax.grad(lambda x: (layers.max_pool_2x2(x, "flax") ** 2).sum())(x)
    np.testing.assert_allclose(ga, gb)


@pytest.mark.parametrize("shape, stride", [((2, 8, 8, 3), 1), ((2, 9, 7, 5), 2)])
def test_im2col_conv_is_the_same_convolution(shape, stride):
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), (3, 3, shape[-1], 4))
    np.testing.assert_allclose(layers.conv2d_im2col(x, w, stride), layers._conv(x, w, stride),
                               rtol=1e-5, atol=1e-5)
    ours = jax.grad(lambda x, w: (layers.conv2d_im2col(x, w, stride) ** 2).sum(), (0, 1))(x, w)
    ref = jax.grad(lambda x, w: (layers._conv(x, w, stride) ** 2).sum(), (0, 1))(x, w)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_unknown_forms_are_refused():
    with pytest.raises(ValueError, match="pool form"):
        layers.max_pool_2x2(jnp.zeros((1, 4, 4, 1)), "avg")
