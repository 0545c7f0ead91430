"""Localisation, once the global test has rejected: which classes moved, and where to.

Per class, the production model's class statistics against the controls' by a t prediction
interval (`class_p_values`, each model counted once; corrected over classes x statistics);
then, for each flagged class, where its concept went (`partner_tests`) and which classes that
names (`named_classes`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from drift_jax import stats as stats_lib

# the two questions `partner_tests` asks about a flagged class: who reads whose gray data
PARTNER_DIRECTIONS = ("base_reads_production", "production_reads_base")


@dataclasses.dataclass(frozen=True)
class ClassTests:
    """The per-class tests of one attack for every seed: ``statistics`` the statistics tested,
    ``by_statistic`` [S, statistics, C] their one-sided p-values, ``rank`` [S, C] the rank
    p-value of the decision's own per-class statistic, ``bonferroni`` [S, C] per class the
    smallest over its statistics times their number, ``corrected`` [S, C] per class the
    smallest after the correction over classes x statistics (what flags a class)."""

    statistics: tuple[str, ...]
    by_statistic: np.ndarray
    rank: np.ndarray
    bonferroni: np.ndarray
    corrected: np.ndarray


def on_test_scale(class_statistics: dict, name: str) -> np.ndarray:
    """Statistic ``name`` [S, models, C] on the scale the per-class tests read: the mean score
    (a probability) as a clipped logit, since a class mean near its ceiling of 1 has a long
    lower tail across models that a t interval would read as drift; the others as they are."""
    v = class_statistics[name]
    return stats_lib.clipped_logit(v, clip=1e-4) if name == "mean" else v


def class_p_values(class_statistics: dict, names, controls: np.ndarray,
                   correction: str = "holm") -> tuple[np.ndarray, np.ndarray]:
    """One-sided p-values [S, statistics, C] that the production model's (model 1) class
    statistic is low among the controls' (`stats.prediction_p_value`), for each of ``names`` of
    ``class_statistics`` [S, models, C], and per class the smallest of its statistics' p-values
    corrected over classes x statistics [S, C]. The mean score is tested on the logit scale: a
    class mean near its ceiling of 1 has a long lower tail across models, which the t interval
    would read as drift; the model statistics are mean logits already."""
    by_statistic = []
    for name in names:
        v = on_test_scale(class_statistics, name)
        by_statistic.append(stats_lib.prediction_p_value(v[:, controls].transpose(1, 0, 2),
                                                         v[:, 1]))
    by_statistic = np.stack(by_statistic, 1)
    return by_statistic, corrected_classes(by_statistic, correction)


def corrected_classes(by_statistic: np.ndarray, correction: str) -> np.ndarray:
    """[S, statistics, C] p-values -> [S, C]: per class its smallest corrected p-value."""
    correct = stats_lib.CORRECTIONS[correction]
    return np.stack([correct(p.ravel()).reshape(p.shape).min(0) for p in by_statistic])


def class_tests(class_statistics: dict, decision_statistic: str, names,
                correction: str) -> ClassTests:
    """Every seed's per-class tests by the statistics ``names`` (the t interval), with the rank
    p-value of ``decision_statistic``'s class values beside them. With a single control there is
    no spread to test against: the rank p-values stand in."""
    per_class = class_statistics[decision_statistic]
    controls = np.arange(2, per_class.shape[1])
    rank = stats_lib.calibrated_p_value(per_class[:, controls].transpose(1, 0, 2),
                                        per_class[:, 1])
    if len(controls) > 1:
        names = tuple(names)
        by_statistic, corrected = class_p_values(class_statistics, names, controls, correction)
    else:
        names, by_statistic = ("rank",), rank[:, None]
        corrected = corrected_classes(by_statistic, correction)
    bonferroni = np.minimum(by_statistic.min(1) * by_statistic.shape[1], 1.0)
    return ClassTests(names, by_statistic, rank, bonferroni, corrected)


def named_classes(partners: dict[int, dict]) -> list[int]:
    """The flagged classes, then the destinations of those that are not themselves another
    flagged class's destination: a relabel a -> b flagged at both a and b names b's destination
    a, but not the class that a's now meaningless gray data happens to look like."""
    named = destination_named(partners)
    return list(dict.fromkeys([*partners, *(f["destination"] for k, f in partners.items()
                                            if named[k])]))


def destination_named(partners: dict[int, dict]) -> dict[int, bool]:
    """Per flagged class: is its destination named (`named_classes`)?"""
    explained = {f["destination"] for f in partners.values()} & set(partners)
    return {k: f["destination"] is not None and k not in explained for k, f in partners.items()}


def partner_tests(answers: dict[str, np.ndarray], flagged: list[np.ndarray], alpha: float,
                  correction: str = "holm") -> list[dict[int, dict]]:
    """Where a flagged class's concept went, asked in both directions (`PARTNER_DIRECTIONS`):

    * ``base_reads_production``: does the base model read the production model's gray data of
      class k as another class j more often than the controls'? A relabel a -> b often moves
      the membership scores of b only; its gray images, though, are answered a by the base
      model.
    * ``production_reads_base``: does the production model read the base model's gray data of
      class k as j more often than the controls do? A partial relabel a -> b keeps the
      production model's own prototype of a (inversion is mode-seeking), but its labels now
      send a's images to b: flagged at a, this names b.

    Per flagged class k, direction and j != k, a one-sided exact test (`stats.fisher_tests`)
    compares the share of the production model's answers j with the controls' (pooled),
    corrected over the 2 (C - 1) tests. The destination is the class with the largest excess
    share among those whose corrected p-value is at most ``alpha``.

    answers: per direction [S, models, C, samples], the answered class for each gray image
    (model 1 the production model, 2.. the controls); flagged: per seed the flagged class
    indices. Returns per seed {k: {"destination": j or None, "direction": the
    destination's, "p_values": {direction: {j: corrected p-value}}}}.
    """
    directions = list(answers)
    num_classes = answers[directions[0]].shape[2]
    pairs = [(s, k) for s, ks in enumerate(flagged) for k in ks]
    out = [{} for _ in flagged]
    if not pairs:
        return out
    seeds, classes = (np.array(v, int) for v in zip(*pairs))
    others = np.array([[j for j in range(num_classes) if j != k] for k in classes])  # [P, C-1]
    # [D, P, 1, M * samples] and [D, P, 1, samples]: answered j?
    controls = np.stack([answers[d][seeds, 2:, classes].reshape(len(pairs), 1, -1)
                         for d in directions])
    production = np.stack([answers[d][seeds, 1, classes][:, None, :] for d in directions])
    tests = stats_lib.fisher_tests(
        (controls == others[:, :, None]).reshape(-1, controls.shape[-1]),
        (production == others[:, :, None]).reshape(-1, production.shape[-1]))
    # [P, D * (C - 1)]: every test of a flagged class in one row
    p, excess = (tests[k].reshape(len(directions), *others.shape).transpose(1, 0, 2)
                 .reshape(len(pairs), -1) for k in ("p_value", "statistic"))
    for (s, k), row, p_row, excess_row in zip(pairs, others, p, excess):
        corrected = stats_lib.CORRECTIONS[correction](p_row)
        found = corrected <= alpha
        best = int(np.where(found, excess_row, -np.inf).argmax())
        out[s][int(k)] = {
            "destination": int(row[best % len(row)]) if found.any() else None,
            "direction": directions[best // len(row)] if found.any() else None,
            "p_values": {d: {int(j): float(q) for j, q in zip(row, q_row)}
                         for d, q_row in zip(directions, corrected.reshape(len(directions), -1))}}
    return out
