"""XLA:CPU probe: 20 SeedCNN train steps inside lax.scan (and unroll=2) against the same jitted step called from Python."""
# ruff: noqa  (kept as it was measured)
import time, os, jax, jax.numpy as jnp, optax
import flax.linen as nn
B = 64; S = 20
class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        P = lambda z: z.reshape(z.shape[0], z.shape[1] // 2, 2, z.shape[2] // 2, 2, z.shape[3]).max(axis=(2, 4))
        x = P(nn.relu(nn.Conv(32, (3, 3))(x))); x = P(nn.relu(nn.Conv(64, (3, 3))(x)))
        x = x.reshape(x.shape[0], -1); x = nn.relu(nn.Dense(128)(x)); return nn.Dense(10)(x)
m = CNN(); tx = optax.adam(1e-3)
X = jax.random.uniform(jax.random.key(0), (S, B, 32, 32, 3)); Y = jax.random.randint(jax.random.key(1), (S, B), 0, 10)
p = m.init(jax.random.key(2), X[0]); o = tx.init(p)
def step(c, b):
    p, o = c; x, y = b
    l, g = jax.value_and_grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(m.apply(p, x), y).mean())(p)
    u, o = tx.update(g, o); return (optax.apply_updates(p, u), o), l
def timeit(name, f, *a):
    jax.block_until_ready(f(*a)); best = 1e9
    for _ in range(3):
        t = time.perf_counter(); jax.block_until_ready(f(*a)); best = min(best, time.perf_counter() - t)
    print(f'{name:20s} {S*B/best:7.0f} img/s')
timeit('scan', jax.jit(lambda p, o: jax.lax.scan(step, (p, o), (X, Y))), p, o)
timeit('scan unroll=2', jax.jit(lambda p, o: jax.lax.scan(step, (p, o), (X, Y), unroll=2)), p, o)
js = jax.jit(step)
def loop(p, o):
    c = (p, o)
    for i in range(S): c, l = js(c, (X[i], Y[i]))
    return c
timeit('python loop', loop, p, o)
# stacked: 4 models vmapped, python loop
P4 = jax.vmap(lambda k: m.init(k, X[0]))(jax.random.split(jax.random.key(3), 4)); O4 = jax.vmap(tx.init)(P4)
vs = jax.jit(jax.vmap(step, in_axes=((0, 0), None)))
def vloop(p, o):
    c = (p, o)
    for i in range(S): c, l = vs(c, (X[i], Y[i]))
    return c
jax.block_until_ready(vloop(P4, O4)); t = time.perf_counter(); jax.block_until_ready(vloop(P4, O4)); dt = time.perf_counter() - t
print(f'{"vmap4 python loop":20s} {4*S*B/dt:7.0f} img/s (model-images)')
