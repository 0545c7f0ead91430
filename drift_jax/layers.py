"""Convolution and pooling in the forms that compile fast on every backend.

Why a custom VJP for convolution: inside a `lax.while_loop` body (so inside `lax.scan`), XLA:CPU
(jax 0.10.2) leaves autodiff's gradient convolutions in their transposed dimension layouts (weight
gradient ``f01b_i01o->01bf``, input gradient with an ``01oi`` kernel) and emits them as naive
loops instead of library calls; outside a loop it canonicalises them first. That is why a scanned
train step ran 26x slower than the same step called from Python
(`scripts/probes/scan_vs_loop.py`). `conv2d` writes both gradients directly in the canonical
``NHWC x HWIO`` form (for the weight gradient the input's channels act as the batch and its batch
as the contracted feature axis; for the input gradient the kernel is flipped and its channel axes
swapped explicitly), so they are library convolutions in and out of loops. Numerically they are
the same contractions as autodiff's (tests/test_layers.py checks parity).

Why reshape-max pooling: `flax.linen.max_pool`'s backward (select-and-scatter) made a SeedCNN step
3.4x slower on XLA:CPU (`scripts/probes/pooling_step.py`); a reshape + max over the window axes
is cheap. Its gradient is written by hand (four strided slices) so that a tied window sends it to
one element, as PyTorch and flax do: MIFace parity with IBM ART depends on it.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
CONV_FORMS = ("canonical", "autodiff", "im2col")
POOL_FORMS = ("reshape", "flax")


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv(x, w, stride: int):
    pads = [_same_padding(x.shape[1], w.shape[0], stride),
            _same_padding(x.shape[2], w.shape[1], stride)]
    return lax.conv_general_dilated(x, w, (stride, stride), pads,
                                    dimension_numbers=DIMENSION_NUMBERS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x: jax.Array, w: jax.Array, stride: int = 1) -> jax.Array:
    """SAME-padded 2-D convolution. x: [B, H, W, I], w: [kh, kw, I, O] -> [B, H/s, W/s, O]."""
    return _conv(x, w, stride)


def _conv2d_fwd(x, w, stride):
    return _conv(x, w, stride), (x, w)


def _conv2d_bwd(stride, residuals, g):
    x, w = residuals
    kh, kw = w.shape[:2]
    pad_h = _same_padding(x.shape[1], kh, stride)
    pad_w = _same_padding(x.shape[2], kw, stride)
    # dX: g dilated by the stride, correlated with the spatially flipped kernel whose in/out
    # channels are swapped explicitly (autodiff's `01oi` kernel layout is the other slow case).
    w_t = jnp.flip(w, (0, 1)).swapaxes(2, 3)
    dx_pads = [(k - 1 - lo, size - (out - 1) * stride - 1 + lo)
               for k, (lo, _), size, out in ((kh, pad_h, x.shape[1], g.shape[1]),
                                             (kw, pad_w, x.shape[2], g.shape[2]))]
    dx = lax.conv_general_dilated(g, w_t, (1, 1), dx_pads, lhs_dilation=(stride, stride),
                                  dimension_numbers=DIMENSION_NUMBERS)
    # dW[a, b, i, o] = sum_{n, h, v} xpad[n, h*s + a, v*s + b, i] * g[n, h, v, o]:
    # a convolution of x^T [I, H, W, N] with the kernel g^T [h, v, N, O] dilated by the stride.
    x_t = jnp.transpose(x, (3, 1, 2, 0))
    g_t = jnp.transpose(g, (1, 2, 0, 3))
    dw = lax.conv_general_dilated(x_t, g_t, (1, 1), [pad_h, pad_w], rhs_dilation=(stride, stride),
                                  dimension_numbers=DIMENSION_NUMBERS)
    dw = jnp.transpose(dw[:, :kh, :kw, :], (1, 2, 0, 3))
    return dx, dw.astype(w.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv2d_im2col(x: jax.Array, w: jax.Array, stride: int = 1) -> jax.Array:
    """`conv2d` as patches @ kernel: one matrix product per layer, so a vmapped stack becomes a
    batched matrix product (an accelerator candidate; on XLA:CPU its d/dx is 10-25x slower,
    `scripts/probes/conv_kernels.py`)."""
    kh, kw, cin, cout = w.shape
    pads = [_same_padding(x.shape[1], kh, stride), _same_padding(x.shape[2], kw, stride)]
    # Patches come out channel-major (cin, kh, kw): order the kernel rows the same way.
    patches = lax.conv_general_dilated_patches(x, (kh, kw), (stride, stride), pads,
                                               dimension_numbers=DIMENSION_NUMBERS)
    return patches @ jnp.transpose(w, (2, 0, 1, 3)).reshape(cin * kh * kw, cout)


class Conv(nn.Module):
    """SAME-padded conv layer, parameter layout as `flax.linen.Conv` (``kernel`` HWIO, ``bias``)."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    use_bias: bool = True
    form: str = "canonical"
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
        if self.form == "canonical":
            y = conv2d(x, kernel, self.stride)
        elif self.form == "autodiff":
            y = _conv(x, kernel, self.stride)
        elif self.form == "im2col":
            y = conv2d_im2col(x, kernel, self.stride)
        else:
            raise ValueError(f"conv form must be one of {CONV_FORMS}, got {self.form!r}")
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y


def max_pool_2x2(x: jax.Array, form: str = "reshape") -> jax.Array:
    """2x2 max pooling, stride 2, VALID (odd trailing rows/columns dropped). x: [B, H, W, C]."""
    if form == "flax":
        return nn.max_pool(x, (2, 2), (2, 2))
    if form != "reshape":
        raise ValueError(f"pool form must be one of {POOL_FORMS}, got {form!r}")
    _, h, w, _ = x.shape
    return _pool_even(x[:, : h - h % 2, : w - w % 2, :])


@jax.custom_vjp
def _pool_even(x: jax.Array) -> jax.Array:
    """Reshape-max over 2x2 windows of an even-sized x [B, H, W, C]."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _pool_even_fwd(x):
    return _pool_even(x), x


def _pool_even_bwd(x, g):
    """The whole gradient of a window goes to its first maximum in row-major order, as in
    PyTorch's max_pool2d and flax's select-and-scatter: autodiff of a reshape-max would split it
    evenly over tied maxima, which are common in clipped images (MIFace's black starts)."""
    b, h, w, c = x.shape
    windows = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
    first = jnp.argmax(windows.reshape(b, h // 2, w // 2, c, 4), axis=-1)
    picked = first[..., None] == jnp.arange(4)
    dx = jnp.where(picked, g[..., None], 0.0).astype(x.dtype)
    dx = dx.reshape(b, h // 2, w // 2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return (dx.reshape(b, h, w, c),)


_pool_even.defvjp(_pool_even_fwd, _pool_even_bwd)
