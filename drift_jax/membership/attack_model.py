"""ART's default membership attack network, in Flax, trained as a stack with optax.

Architecture (ART ``MembershipInferenceAttackModel``): features C->512->100->64 and one-hot label
C->256->64, ReLU, concatenated -> 1, sigmoid; BCE, Adam 1e-4, up to 100 epochs, batch 100.
We add feature standardisation, a validation split and early stopping on the validation loss
(best parameters kept; not before ``min_epochs``, since a patience of a few epochs stopped it on
the initial plateau). A attack models (one per target model, or one per target and class) train
at once as one compiled program: vmapped over models, each on its own features and example mask,
`lax.scan` over steps and `lax.while_loop` over epochs, so the whole fit is one dispatch.
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
from drift_jax.validate import bounded, check_fields


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
    epochs: int = bounded(100, ge=1)
    batch_size: int = bounded(100, ge=1)
    learning_rate: float = bounded(1e-4, gt=0)
    validation_fraction: float = bounded(0.2, gt=0, lt=1)
    patience: int = bounded(20, ge=1)  # epochs without a better validation loss before stopping
    min_epochs: int = bounded(40, ge=0)  # ... but never before this: Adam at 1e-4 plateaus first

    def __post_init__(self):
        check_fields(self)


@dataclasses.dataclass
class AttackModels:
    """A stack of A trained attack models and the feature standardisation each expects."""

    params: dict  # leaves [A, ...]
    mean: np.ndarray  # [A, F]
    std: np.ndarray  # [A, F]
    num_classes: int
    epochs_trained: int

    def probability(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Member probability of every model on its own examples: features [A, n, F], labels
        int [A, n] -> [A, n]."""
        return np.asarray(_probability_program(self.num_classes)(
            self.params, jnp.asarray(self.mean), jnp.asarray(self.std),
            jnp.asarray(features, jnp.float32), jnp.asarray(labels, jnp.int32)))


@functools.lru_cache(maxsize=8)
def _probability_program(num_classes: int):
    net = AttackNet(num_classes)

    def one(p, mean, std, x, y):
        return jax.nn.sigmoid(net.apply(p, (x - mean) / std, jax.nn.one_hot(y, num_classes)))

    return jax.jit(jax.vmap(one))


@functools.lru_cache(maxsize=8)
def _fit_program(num_classes: int, config: AttackTrainConfig):
    """The whole fit of A models as one compiled program; the data are arguments."""
    net = AttackNet(num_classes)
    tx = optax.adam(config.learning_rate)
    batch = config.batch_size

    def weighted_bce(params, x, onehot, member, ix, w):
        bce = optax.sigmoid_binary_cross_entropy(net.apply(params, x[ix], onehot[ix]), member[ix])
        return jnp.sum(bce * w) / jnp.maximum(jnp.sum(w), 1.0)

    def init_one(key, x, y):
        params = net.init(jax.random.fold_in(key, 0), x[:1], jax.nn.one_hot(y[:1], num_classes))
        return params, tx.init(params)

    def epoch_one(e, key, x, y, member, mask, train, val, state):
        """One epoch of one model: x [n, F] standardised, y int [n], member/mask float [n],
        train [nt] and val [nv] index arrays; state (params, opt, best params, loss, since)."""
        params, opt_state, best_params, best_loss, since = state
        onehot = jax.nn.one_hot(y, num_classes)
        steps = -(-train.shape[0] // batch)
        perm = jax.random.permutation(jax.random.fold_in(key, e + 1), train)
        pos = jnp.arange(steps * batch)
        ix = perm[pos % train.shape[0]].reshape(steps, batch)
        valid = (pos < train.shape[0]).reshape(steps, batch)

        def step(carry, b):
            params, opt_state = carry
            bix, ok = b
            g = jax.grad(weighted_bce)(params, x, onehot, member, bix, mask[bix] * ok)
            updates, opt_state = tx.update(g, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), (ix, valid))
        val_loss = weighted_bce(params, x, onehot, member, val, mask[val])
        improved = val_loss < best_loss
        best_params = jax.tree.map(lambda a, b: jnp.where(improved, a, b), params, best_params)
        return (params, opt_state, best_params, jnp.where(improved, val_loss, best_loss),
                jnp.where(improved, 0, since + 1))

    def fit(keys, x, y, member, mask, train, val):
        """keys [A], x [A, n, F], y [A, n], member/mask [A, n], train [A, nt], val [A, nv].
        Epochs run until every model has waited ``patience`` epochs (after ``min_epochs``)."""
        data = (keys, x, y, member, mask, train, val)
        params, opt_state = jax.vmap(init_one)(keys, x, y)
        state = (params, opt_state, params, jnp.full(keys.shape[0], jnp.inf),
                 jnp.zeros(keys.shape[0], jnp.int32))

        def stopped(e, since):  # per model: it has waited `patience` epochs, after min_epochs
            return (e >= config.min_epochs) & (since >= config.patience)

        def cond(carry):
            e, (*_, since) = carry
            return (e < config.epochs) & ~jnp.all(stopped(e, since))

        def body(carry):
            e, state = carry
            new = jax.vmap(lambda *args: epoch_one(e, *args))(*data, state)
            # A stopped model stays as it is, so its result does not depend on its companions.
            frozen = stopped(e, state[-1])
            keep = lambda a, b: jnp.where(frozen.reshape((-1,) + (1,) * (a.ndim - 1)), b, a)
            return e + 1, jax.tree.map(keep, new, state)

        epochs, state = jax.lax.while_loop(cond, body, (jnp.int32(0), state))
        return state[2], epochs

    return jax.jit(fit)


def train_attack_models(features: np.ndarray, labels: np.ndarray, is_member: np.ndarray,
                        masks: np.ndarray, keys: jax.Array,
                        config: AttackTrainConfig = AttackTrainConfig(),
                        num_classes: int | None = None) -> AttackModels:
    """Trains A attack models at once; model a learns from its own examples where ``masks[a]``.

    Args:
      features: [A, n, F] attack features (model outputs); standardised here, per model.
      labels: int [A, n] class labels (one-hot input of the label branch).
      is_member: bool [A, n] targets.
      masks: bool [A, n]: which examples model a trains and validates on.
      keys: [A] PRNG keys (initialisation, validation split, shuffling).
      num_classes: width of the label one-hot (default: the largest label + 1).
    """
    features = np.asarray(features, np.float32)
    if features.ndim != 3:
        raise DriftJaxError(f"attack features must be [models, n, F], got {features.shape}.")
    num_models, n, _ = features.shape
    labels = np.broadcast_to(np.asarray(labels), (num_models, n))
    is_member = np.broadcast_to(np.asarray(is_member, bool), (num_models, n))
    masks = np.broadcast_to(np.asarray(masks, bool), (num_models, n))
    if len(keys) != num_models:
        raise DriftJaxError(f"{len(keys)} keys for {num_models} attack models.")
    members, others = (is_member & masks).sum(1), (~is_member & masks).sum(1)
    short = np.flatnonzero((members + others < 10) | (members == 0) | (others == 0))
    if short.size:
        a = short[0]
        raise DriftJaxError("the attack needs members and non-members to learn from (at least "
                            f"10 examples with both kinds); attack model {a} has {members[a]} "
                            f"members and {others[a]} non-members.")
    num_classes = max(num_classes or int(labels.max()) + 1, 2)
    n_val = max(1, int(round(n * config.validation_fraction)))
    key_data = np.asarray(jax.random.key_data(keys)).reshape(num_models, -1)
    orders = np.stack([np.random.default_rng(row).permutation(n) for row in key_data])
    val, train = orders[:, :n_val], orders[:, n_val:]
    # Standardise with the statistics of each model's own training examples.
    weight = np.take_along_axis(masks, train, 1)[..., None]
    train_x = np.take_along_axis(features, train[..., None], 1)
    count = np.maximum(weight.sum(1), 1)
    mean = (train_x * weight).sum(1) / count
    std = np.sqrt(((train_x - mean[:, None]) ** 2 * weight).sum(1) / count) + 1e-6
    x = (features - mean[:, None]) / std[:, None]
    params, epochs = _fit_program(num_classes, config)(
        keys, jnp.asarray(x), jnp.asarray(labels, jnp.int32), jnp.asarray(is_member, jnp.float32),
        jnp.asarray(masks, jnp.float32), jnp.asarray(train, jnp.int32),
        jnp.asarray(val, jnp.int32))
    return AttackModels(params, mean, std, num_classes, int(epochs))
