"""Seeded, stratified splits of one dataset into index arrays."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from drift_jax.errors import DriftJaxError


class Split(NamedTuple):
    """Disjoint, sorted int64 index arrays into one dataset."""

    base: np.ndarray
    production: np.ndarray
    holdout: np.ndarray


def stratified_split(labels: np.ndarray, fractions: Sequence[float],
                     seed: int | np.random.Generator,
                     num_classes: int | None = None) -> list[np.ndarray]:
    """Splits indices into ``len(fractions)`` disjoint parts, each class divided in proportion,
    shuffled by ``seed`` (an int, or a generator such as a `streams.generator`).

    Within a class the sizes are ``floor(n_c * cumulative fraction)`` differences, so every class
    keeps its share; fractions may sum to less than 1 (the rest is dropped). Every part must get
    at least one image of every class, otherwise the error names the class and the split.
    """
    labels = np.asarray(labels)
    fractions = np.asarray(fractions, float)
    if fractions.ndim != 1 or (fractions <= 0).any() or fractions.sum() > 1 + 1e-9:
        raise DriftJaxError(f"split fractions must be positive and sum to at most 1, "
                            f"got {fractions.tolist()}.")
    num_classes = num_classes or int(labels.max()) + 1
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    bounds = np.concatenate([[0.0], np.cumsum(fractions)])
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        rng.shuffle(members)
        cuts = np.floor(bounds * len(members) + 1e-9).astype(int)
        for i in range(len(fractions)):
            chunk = members[cuts[i]:cuts[i + 1]]
            if chunk.size == 0:
                raise DriftJaxError(
                    f"class {c} has {len(members)} images, too few to give split {i} "
                    f"(fraction {fractions[i]:g}) any; use larger fractions, more data, or drop "
                    "the class.")
            parts[i].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def base_production_holdout(labels: np.ndarray, seed: int, holdout_fraction: float = 0.2,
                            production_fraction: float = 0.5,
                            num_classes: int | None = None) -> Split:
    """docs/METHOD.md ("Splits"): hold out ``holdout_fraction``, then split the rest into base and
    production (``production_fraction`` of the rest goes to production)."""
    if not 0 < holdout_fraction < 1 or not 0 < production_fraction < 1:
        raise DriftJaxError("holdout_fraction and production_fraction must lie strictly "
                            f"between 0 and 1, got {holdout_fraction}, {production_fraction}.")
    rest = 1 - holdout_fraction
    base, production, holdout = stratified_split(
        labels, [rest * (1 - production_fraction), rest * production_fraction, holdout_fraction],
        seed, num_classes)
    return Split(base, production, holdout)
