"""Named random streams: every random draw of a run derives from (seed, name).

    streams.key(seed, "train")            # a JAX PRNG key
    streams.generator(seed, "controls")   # a numpy Generator
    streams.fold(key, "rule_based")       # a named sub-stream of a key

A name is hashed (SHA-256: stable across processes, platforms and Python versions) into two
32-bit words, so streams of different names are independent of one another, no stream of one
seed is another seed's (the seed and the name enter together, never as ``seed + 1``), and adding
a stream, an attack or a scenario leaves every other stream as it was. The names a detect run
uses are `DETECT_STREAMS`; mitigation's are `MITIGATE_STREAMS`.
"""

from __future__ import annotations

import functools
import hashlib

import jax
import numpy as np

# what each named stream of a detect run draws (`detect.plan`, `detect.pipeline`)
DETECT_STREAMS = {
    "split": "the stratified base / production / reference / holdout split",
    "scenario": "the drift scenario's draws on the production data",
    "controls": "each control model's training rows",
    "attack_rows": "the known members and non-members an attack is fitted on",
    "init": "model initialisation, one sub-key per member (base, production, controls)",
    "train": "batch order, one sub-key per member",
    "invert": "inversion starts and jitter, one sub-key per member",
    "attack": "attack fitting, one sub-stream per attack by name; shadows by 'shadows'",
    "test": "permutation tests, one sub-stream per attack by name; the MMD test by 'mmd'",
}
MITIGATE_STREAMS = {
    "mitigation_scenario": "the scenario on held-out production-distribution images",
    "mitigation_split": "given production data split into training and evaluation rows",
    "mitigation_train": "candidate initialisation ('init') and batch order ('train')",
    "mitigation_invert": "the candidates' inversion",
}


@functools.cache
def _words(name: str) -> tuple[int, int]:
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:8], "little")


def fold(key: jax.Array, name: str) -> jax.Array:
    """The sub-stream ``name`` of ``key`` (one key, or a batch of keys [N] folded alike)."""
    first, second = _words(name)

    def one(k):
        return jax.random.fold_in(jax.random.fold_in(k, first), second)

    return jax.vmap(one)(key) if key.ndim else one(key)


def key(seed: int, name: str) -> jax.Array:
    """The JAX key of stream ``name`` of ``seed``."""
    return fold(jax.random.key(int(seed)), name)


def generator(seed: int, name: str) -> np.random.Generator:
    """The numpy generator of stream ``name`` of ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *_words(name)]))
