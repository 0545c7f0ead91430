"""One protocol for every membership-inference attack: ``fit(...)``, then ``score(images, labels)``.

Images are uint8 [n, H, W, ch] (as in `drift_jax.data.Dataset`) or floats in [0, 1] (gray data);
labels int [n]. Every attack targets the BASE model (METHOD.md steps 5-6).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from drift_jax.config import ExecutionConfig
from drift_jax.errors import DriftJaxError
from drift_jax.models import ModelSpec
from drift_jax.stack import predict_stack, resolve_execution


@dataclasses.dataclass
class MembershipScores:
    """Per-image member probability (or score) [n] and decision [n]; higher means member."""

    probability: np.ndarray
    decision: np.ndarray

    def summary(self) -> dict:
        """``member_fraction`` is what the original work reported as the attack's "accuracy"."""
        return {"member_fraction": float(np.mean(self.decision)),
                "mean_probability": float(np.mean(self.probability)), "n": int(self.decision.size)}


class MembershipAttack(Protocol):
    name: str

    def score(self, images: np.ndarray, labels: np.ndarray) -> MembershipScores: ...


def as_float_images(images: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """uint8 0..255 or float [0, 1] images -> float32 [n, H, W, ch] in [0, 1], validated."""
    images = np.asarray(images)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(image_shape):
        raise DriftJaxError(f"images must have shape [n, {', '.join(map(str, image_shape))}], "
                            f"got {images.shape}.")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    if not np.issubdtype(images.dtype, np.floating):
        raise DriftJaxError(f"images must be uint8 or float in [0, 1], got {images.dtype}.")
    if not np.isfinite(images).all():
        raise DriftJaxError("images contain NaN or Inf; they cannot be scored.")
    if images.min() < 0 or images.max() > 1:
        raise DriftJaxError("float images must lie in [0, 1]; divide 0..255 data by 255.")
    return images.astype(np.float32)


def check_labels(labels: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise DriftJaxError(f"labels must be integers of shape [{n}], got {labels.dtype} "
                            f"{labels.shape}.")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise DriftJaxError(f"labels must lie in 0..{num_classes - 1}.")
    return labels.astype(np.int32)


@functools.lru_cache(maxsize=16)
def _logits_program(spec: ModelSpec):
    mode = resolve_execution(ExecutionConfig()).member_mode
    return jax.jit(lambda v, x: predict_stack(spec, v, x, mode))


def stack_logits(spec: ModelSpec, variables: dict, images: np.ndarray,
                 batch_size: int = 1000) -> np.ndarray:
    """Logits of every member of a stack on float images: [N, n, C] float32. Fixed-size batches
    (the last one padded) keep it to one compile per stack shape."""
    fn = _logits_program(spec)
    n = images.shape[0]
    batch_size = min(batch_size, max(n, 1))
    x = np.concatenate([images, np.zeros(((-n) % batch_size, *images.shape[1:]), images.dtype)])
    out = [np.asarray(fn(variables, jnp.asarray(x[i:i + batch_size])))
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out, axis=1)[:, :n]
