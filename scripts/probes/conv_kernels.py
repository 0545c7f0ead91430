"""XLA:CPU probe: lax.conv against an im2col convolution, forward, d/dx and d/dw, for SeedCNN's two conv layers at batch 64."""
# ruff: noqa  (kept as it was measured)
import time, os, jax, jax.numpy as jnp
from jax import lax
B = 64
x = jax.random.normal(jax.random.key(0), (B, 32, 32, 3)); w1 = jax.random.normal(jax.random.key(1), (3, 3, 3, 32)) * .1
h = jax.random.normal(jax.random.key(2), (B, 16, 16, 32)); w2 = jax.random.normal(jax.random.key(3), (3, 3, 32, 64)) * .1
dn = ('NHWC', 'HWIO', 'NHWC')
def conv(x, w): return lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=dn)
def conv_im2col(x, w):
    kh, kw, ci, co = w.shape
    p = lax.conv_general_dilated_patches(x, (kh, kw), (1, 1), 'SAME', dimension_numbers=dn)  # [B,H,W,ci*kh*kw] (ci-major)
    wt = w.transpose(2, 0, 1, 3).reshape(ci * kh * kw, co)
    return p @ wt
def bench(name, f, *a):
    f = jax.jit(f); jax.block_until_ready(f(*a)); best = 1e9
    for _ in range(5):
        t = time.perf_counter(); jax.block_until_ready(f(*a)); best = min(best, time.perf_counter() - t)
    print(f'{name:40s} {best*1e3:8.2f} ms')
for nm, c in [('lax.conv', conv), ('im2col', conv_im2col)]:
    print('check', nm, float(jnp.abs(c(h, w2) - conv(h, w2)).max()))
    for lay, (xx, ww) in [('conv1 3->32 @32', (x, w1)), ('conv2 32->64 @16', (h, w2))]:
        bench(f'{nm} {lay} fwd', c, xx, ww)
        bench(f'{nm} {lay} d/dx', jax.grad(lambda a, b: c(a, b).sum()), xx, ww)
        bench(f'{nm} {lay} d/dw', jax.grad(lambda a, b: c(a, b).sum(), argnums=1), xx, ww)
