"""ART's default membership attack network, in Flax, trained as a stack with optax.

Architecture (ART ``MembershipInferenceAttackModel``): features C->512->100->64 and one-hot label
C->256->64, ReLU, concatenated -> 1, sigmoid; BCE, Adam 1e-4, up to 100 epochs, batch 100.
We add feature standardisation, a validation split and early stopping on the validation loss
(best parameters kept; not before ``min_epochs``, since a patience of a few epochs stopped it on
the initial plateau). Several attack models (one global, or one per class) train at once as a
vmapped stack, each weighting the examples by its own mask.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from drift_jax.errors import DriftJaxError


class AttackNet(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, features, onehot):
        f = nn.relu(nn.Dense(512)(features))
        f = nn.relu(nn.Dense(100)(f))
        f = nn.relu(nn.Dense(64)(f))
        lab = nn.relu(nn.Dense(256)(onehot))
        lab = nn.relu(nn.Dense(64)(lab))
        return nn.Dense(1)(jnp.concatenate([f, lab], -1))[..., 0]  # logit of "member"


@dataclasses.dataclass(frozen=True)
class AttackTrainConfig:
    epochs: int = 100
    batch_size: int = 100
    learning_rate: float = 1e-4
    validation_fraction: float = 0.2
    patience: int = 20  # epochs without a better validation loss before stopping ...
    min_epochs: int = 40  # ... but never before this: Adam at 1e-4 starts on a plateau


@dataclasses.dataclass
class AttackModels:
    """A stack of A trained attack models and the feature standardisation they expect."""

    params: dict  # leaves [A, ...]
    mean: np.ndarray
    std: np.ndarray
    num_classes: int
    epochs_trained: list

    def probability(self, features: np.ndarray, labels: np.ndarray,
                    which: np.ndarray | None = None) -> np.ndarray:
        """Member probability [n]; ``which`` [n] picks the attack model per example (default 0)."""
        x = (features - self.mean) / self.std
        onehot = jax.nn.one_hot(labels, self.num_classes)
        logits = _apply_all(self.num_classes)(self.params, jnp.asarray(x, jnp.float32), onehot)
        which = np.zeros(len(x), int) if which is None else which
        return np.asarray(jax.nn.sigmoid(logits))[which, np.arange(len(x))]


@functools.lru_cache(maxsize=8)
def _apply_all(num_classes: int):
    net = AttackNet(num_classes)
    return jax.jit(jax.vmap(lambda p, x, o: net.apply(p, x, o), in_axes=(0, None, None)))


def train_attack_models(features: np.ndarray, labels: np.ndarray, is_member: np.ndarray,
                        masks: np.ndarray, key: jax.Array,
                        config: AttackTrainConfig = AttackTrainConfig()) -> AttackModels:
    """Trains A attack models; model a learns from the examples where ``masks[a]`` is set.

    Args:
      features: [n, F] attack features (model outputs); standardised here.
      labels: int [n] class labels (one-hot input of the label branch).
      is_member: bool [n] targets.
      masks: bool [A, n].
    """
    n, num_features = features.shape
    num_classes = int(labels.max()) + 1 if n else 0
    num_classes = max(num_classes, 2)
    if n < 10 or is_member.all() or not is_member.any():
        raise DriftJaxError("the attack needs members and non-members to learn from (at least "
                            "10 examples with both kinds).")
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    order = rng.permutation(n)
    n_val = max(1, int(round(n * config.validation_fraction)))
    val, train = order[:n_val], order[n_val:]
    mean = features[train].mean(0)
    std = features[train].std(0) + 1e-6
    x = jnp.asarray((features - mean) / std, jnp.float32)
    onehot = jax.nn.one_hot(jnp.asarray(labels), num_classes)
    y = jnp.asarray(is_member, jnp.float32)
    masks = jnp.asarray(masks, jnp.float32)
    num_models = masks.shape[0]
    net = AttackNet(num_classes)
    tx = optax.adam(config.learning_rate)
    init_keys = jax.random.split(key, num_models)
    params = jax.vmap(lambda k: net.init(k, x[:1], onehot[:1]))(init_keys)
    opt_state = jax.vmap(tx.init)(params)
    batch = config.batch_size
    steps = -(-len(train) // batch)
    train_d, val_d = jnp.asarray(train), jnp.asarray(val)

    def weighted_bce(p, ix, w):
        logits = net.apply(p, x[ix], onehot[ix])
        bce = optax.sigmoid_binary_cross_entropy(logits, y[ix])
        return jnp.sum(bce * w) / jnp.maximum(jnp.sum(w), 1.0)

    @jax.jit
    def epoch(params, opt_state, best, epoch_key):
        perm = jax.random.permutation(epoch_key, train_d)
        pos = jnp.arange(steps * batch)
        ix = perm[pos % len(train)].reshape(steps, batch)
        valid = (pos < len(train)).reshape(steps, batch)

        def step(carry, b):
            params, opt_state = carry
            bix, ok = b

            def one(p, o, m):
                w = m[bix] * ok
                g = jax.grad(weighted_bce)(p, bix, w)
                u, o = tx.update(g, o, p)
                return optax.apply_updates(p, u), o

            return jax.vmap(one)(params, opt_state, masks), None

        (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), (ix, valid))
        val_loss = jax.vmap(lambda p, m: weighted_bce(p, val_d, m[val_d]))(params, masks)
        best_params, best_loss, since = best
        improved = val_loss < best_loss
        best_params = jax.tree.map(
            lambda a, b: jnp.where(improved.reshape((-1,) + (1,) * (a.ndim - 1)), a, b),
            params, best_params)
        best = (best_params, jnp.where(improved, val_loss, best_loss),
                jnp.where(improved, 0, since + 1))
        return params, opt_state, best

    best = (params, jnp.full(num_models, jnp.inf), jnp.zeros(num_models, jnp.int32))
    epochs_trained = config.epochs
    for e in range(config.epochs):
        params, opt_state, best = epoch(params, opt_state, best, jax.random.fold_in(key, e))
        if e + 1 >= config.min_epochs and (np.asarray(best[2]) >= config.patience).all():
            epochs_trained = e + 1
            break
    return AttackModels(best[0], mean, std, num_classes, [epochs_trained] * num_models)
