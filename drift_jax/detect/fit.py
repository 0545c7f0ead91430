"""Steps 1-4 for every seed of a run: train every model as one stack, invert them all.

Members per seed, in this order: the base model, the production model, then the M controls.
Each member's keys depend on its seed and role only, so stacking seeds changes no number.
"""

from __future__ import annotations

import jax
import numpy as np

from drift_jax import stack
from drift_jax.detect.config import DetectConfig
from drift_jax.detect.plan import SeedPlan, StackedData
from drift_jax.inversion import GrayData, invert
from drift_jax.models import ModelSpec


def train_models(spec: ModelSpec, config: DetectConfig, data: StackedData,
                 plans: list[SeedPlan], production_model: dict | None,
                 progress: bool = True) -> dict:
    """Every seed's base, production and control models: one stack [S x (2 + M)] trained on one
    device-resident image array. A given ``production_model`` (a stack of one) takes role 1 of
    every seed: the trained members skip it and keep their roles' keys."""
    indices, init_keys, train_keys = [], [], []
    with_production = production_model is None
    for plan, production_rows in zip(plans, data.production):
        roles = [plan.split.base, *([production_rows] if with_production else []),
                 *plan.control_rows(production_rows)]
        role_ids = np.array([0, *range(2 - with_production, plan.group_size)])
        indices += roles
        init_keys.append(stack.per_member_keys(plan.keys["init"], plan.group_size)[role_ids])
        train_keys.append(stack.per_member_keys(plan.keys["train"], plan.group_size)[role_ids])
    variables = stack.init_stack(spec, jax.numpy.concatenate(init_keys))
    trained = stack.train_stack(spec, variables, data.images, data.labels, indices, config.train,
                                jax.numpy.concatenate(train_keys), progress=progress).variables
    if with_production:
        return trained
    # Append the given model once, then gather it into role 1 of every seed's group.
    n, step = stack.stack_size(trained), plans[0].group_size - 1
    combined = jax.tree.map(lambda t, p: np.concatenate([t, p[:1]]), trained, production_model)
    order = np.concatenate([[g * step, n, *range(g * step + 1, (g + 1) * step)]
                            for g in range(len(plans))])
    return stack.member(combined, order)


def invert_models(spec: ModelSpec, config: DetectConfig, trained: dict, plans: list[SeedPlan],
                  base_images: np.ndarray, progress: bool = True) -> GrayData:
    """Gray data of every model of every seed [S x (2 + M), C, samples, ...]: one program.
    ``base_images`` uint8 [N, H, W, ch]: their mean image seeds ``miface.init='mean'``."""
    keys = jax.numpy.concatenate([stack.per_member_keys(p.keys["invert"], p.group_size)
                                  for p in plans])
    mean_image = None
    if config.inversion.method == "miface" and config.inversion.miface.init == "mean":
        mean_image = base_images.mean(0, dtype=np.float32) / 255.0
    return invert(spec, trained, range(spec.num_classes), config.inversion, keys,
                  progress=progress, mean_image=mean_image)
