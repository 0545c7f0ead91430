"""XLA:CPU probe: MIFace-style gradient ascent (20 images, 50 steps) inside lax.fori_loop against a Python loop over one jitted step."""
# ruff: noqa  (kept as it was measured)
import time, jax, jax.numpy as jnp
import flax.linen as nn
class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        P = lambda z: z.reshape(z.shape[0], z.shape[1] // 2, 2, z.shape[2] // 2, 2, z.shape[3]).max(axis=(2, 4))
        x = P(nn.relu(nn.Conv(32, (3, 3))(x))); x = P(nn.relu(nn.Conv(64, (3, 3))(x)))
        x = x.reshape(x.shape[0], -1); x = nn.relu(nn.Dense(128)(x)); return nn.Dense(10)(x)
m = CNN(); N = 20; T = 50
p = m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
c = jnp.arange(N) % 10
def one(x):
    g = jax.grad(lambda x: jax.nn.softmax(m.apply(p, x))[jnp.arange(N), c].sum())(x)
    return jnp.clip(x + 0.1 * g, 0, 1)
x0 = jnp.full((N, 32, 32, 3), 0.5)
f_scan = jax.jit(lambda x: jax.lax.fori_loop(0, T, lambda i, x: one(x), x))
f_one = jax.jit(one)
def loop(x):
    for _ in range(T): x = f_one(x)
    return x
for name, f in [('fori_loop', f_scan), ('python loop', loop)]:
    jax.block_until_ready(f(x0)); t = time.perf_counter(); r = jax.block_until_ready(f(x0)); dt = time.perf_counter() - t
    print(f'{name:12s} {N*T/dt:8.0f} image-iterations/s  ({dt/T*1e3:.1f} ms/iter for {N} images)')
print('same result:', float(jnp.abs(f_scan(x0) - loop(x0)).max()))
