"""The baselines on a run's own models and splits, every seed at once: model disagreement
(from the evaluation's predictions), BBSD (Lipton et al. 2018) and MMD (Gretton et al. 2012)."""

from __future__ import annotations

import jax
import numpy as np
from scipy import special

from drift_jax import baselines as tests
from drift_jax import stack, streams
from drift_jax.detect.config import DetectConfig
from drift_jax.detect.plan import SeedPlan, StackedData
from drift_jax.detect.results import BaselineResult
from drift_jax.models import ModelSpec


def run_baselines(config: DetectConfig, plans: list[SeedPlan], data: StackedData, images,
                  holdout: np.ndarray, logits: np.ndarray, targets: dict,
                  spec: ModelSpec) -> list[dict[str, BaselineResult]]:
    """Per seed, each of ``config.baselines`` that the run can compute. ``logits``
    [S * (2 + M), n, C] are every model's on its seed's holdout rows ``holdout`` [S, n];
    ``targets`` the base models [S]."""
    num_seeds, group = len(plans), plans[0].group_size
    found = [{} for _ in plans]
    if "disagreement" in config.baselines and config.controls:
        preds = logits.argmax(-1).reshape(num_seeds, group, -1)
        for s, result in enumerate(tests.disagreement(preds, 1, np.arange(2, group))):
            found[s]["disagreement"] = result
    if data.production.shape[1]:
        if "bbsd" in config.baselines:
            base_soft = special.softmax(logits.reshape(num_seeds, group, *logits.shape[1:])[:, 0],
                                        axis=-1)
            prod_soft = special.softmax(stack.predict(spec, targets, images, data.production),
                                        axis=-1)
            for s, result in enumerate(tests.bbsd(base_soft, prod_soft)):
                found[s]["bbsd"] = result
        if "mmd" in config.baselines:
            keys = streams.fold(jax.numpy.stack([p.keys["test"] for p in plans]), "mmd")
            results = tests.mmd_tests(data.images[holdout], data.images[data.production],
                                      keys, config.permutations)
            for s, result in enumerate(results):
                found[s]["mmd"] = result
    return [{name: BaselineResult(r["p_value"], bool(r["p_value"] <= config.alpha),
                                  {k: v for k, v in r.items() if k != "p_value"})
             for name, r in per_seed.items()} for per_seed in found]
