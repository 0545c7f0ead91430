"""A plain, per-sample transcription of IBM ART's ``MIFace.infer`` (art 1.20.1) for parity tests
and benchmarks: batch size 1, a Python loop over iterations, one jitted class-gradient step.

It follows ART line by line: step, clip, cost from a fresh prediction, the (inverted) early-stop
mask ``active = cost <= threshold or cost >= max(window)`` and the loop's exit once the single
sample is inactive. ``early_stop=False`` keeps every sample running for ``max_iter`` steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def make_fns(apply_fn, objective: str = "probability"):
    """(class_gradient, predict) for batch-1 inputs; ``apply_fn(x) -> logits``."""

    def output(x):
        out = apply_fn(x)
        return jax.nn.softmax(out) if objective == "probability" else out

    class_gradient = jax.jit(lambda x, label: jax.grad(lambda z: output(z)[0, label])(x))
    return class_gradient, jax.jit(output)


def miface_one(fns, x0: np.ndarray, label: int, max_iter: int = 10_000, lr: float = 0.1,
               threshold: float = 0.99, window_length: int = 100,
               early_stop: bool = True) -> tuple[np.ndarray, int]:
    """Inverts one sample; returns the image [H, W, ch] and the number of steps taken."""
    class_gradient, predict = fns
    batch = np.asarray(x0, np.float32)[None].copy()
    active = True
    window = np.inf * np.ones(window_length)
    i = 0
    while i < max_iter and active:
        grads = np.asarray(class_gradient(jnp.asarray(batch), label))
        batch = np.clip(batch + lr * grads, 0.0, 1.0).astype(np.float32)
        cost = 1 - float(np.asarray(predict(jnp.asarray(batch)))[0, label])
        if early_stop:
            active = bool(cost <= threshold or cost >= np.max(window))
        window[i % window_length] = cost
        i += 1
    return batch[0], i
