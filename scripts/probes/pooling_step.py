"""XLA:CPU probe: one jitted SeedCNN train step (batch 64) with flax max_pool, avg_pool and reshape-max pooling."""
# ruff: noqa  (kept as it was measured)
import time, os, jax, jax.numpy as jnp, optax
import flax.linen as nn
B = 64
class CNN(nn.Module):
    pool: str = 'max'
    @nn.compact
    def __call__(self, x):
        P = (lambda z: nn.max_pool(z, (2, 2), (2, 2))) if self.pool == 'max' else \
            (lambda z: nn.avg_pool(z, (2, 2), (2, 2))) if self.pool == 'avg' else \
            (lambda z: z.reshape(z.shape[0], z.shape[1] // 2, 2, z.shape[2] // 2, 2, z.shape[3]).max(axis=(2, 4)))
        x = P(nn.relu(nn.Conv(32, (3, 3))(x)))
        x = P(nn.relu(nn.Conv(64, (3, 3))(x)))
        x = x.reshape(x.shape[0], -1); x = nn.relu(nn.Dense(128)(x)); return nn.Dense(10)(x)
x = jax.random.uniform(jax.random.key(0), (B, 32, 32, 3)); y = jax.random.randint(jax.random.key(1), (B,), 0, 10)
for pool in ['max', 'avg', 'reshape-max']:
    m = CNN(pool); tx = optax.adam(1e-3); p = m.init(jax.random.key(2), x); o = tx.init(p)
    @jax.jit
    def step(p, o):
        l, g = jax.value_and_grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(m.apply(p, x), y).mean())(p)
        u, o = tx.update(g, o); return optax.apply_updates(p, u), o
    jax.block_until_ready(step(p, o)); best = 1e9
    for _ in range(5):
        t = time.perf_counter(); jax.block_until_ready(step(p, o)); best = min(best, time.perf_counter() - t)
    print(f'{pool:12s} step {best*1e3:8.1f} ms  -> {B/best:7.0f} img/s')
