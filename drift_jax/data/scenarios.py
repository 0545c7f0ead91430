"""Drift scenarios (docs/METHOD.md, "Drift scenarios"): pure functions of (images, labels, key,
severity) applied to the production data only. Severity runs 0 (no change) to 5 (strongest);
``none`` is the honest control. Images are uint8 [n, H, W, ch]; every function returns new
arrays (inputs untouched).

  none                     nothing changes
  label_swap(a, b)         a fraction severity/5 of classes a and b swap labels
  relabel(a, b)            a fraction severity/5 of class a is labelled b
  label_noise              a fraction 0.1 * severity of all labels is redrawn uniformly
  class_transform(a, kind) a fraction severity/5 of class a's images: rotate | invert | colour
  gaussian_noise, blur, brightness, contrast, pixelate, rotation
                           covariate corruptions of all images (CIFAR-10-C spirit)
  prior_shift(classes)     drops a fraction 0.18 * severity of the given classes' images
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from scipy import ndimage

from drift_jax.errors import DriftJaxError


def _rng(key: jax.Array) -> np.random.Generator:
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def _fraction(severity: int) -> float:
    if not 0 <= severity <= 5:
        raise DriftJaxError(f"severity must lie in 0..5, got {severity}.")
    return severity / 5.0


def _pick(rng, mask: np.ndarray, fraction: float) -> np.ndarray:
    idx = np.flatnonzero(mask)
    return rng.choice(idx, int(round(fraction * idx.size)), replace=False)


def none(images, labels, key, severity=0):
    return images.copy(), labels.copy()


def _two_classes(scenario: str, action: str, a, b) -> None:
    """A swap or relabel of a class with itself changes nothing: refused, not run as a drift."""
    if a == b:
        raise DriftJaxError(f"{scenario}: a and b are both class {a!r}, and {action} changes "
                            "nothing; choose two different classes (scenario_params.a and "
                            "scenario_params.b).")


def label_swap(images, labels, key, severity=5, a=0, b=1):
    _two_classes("label_swap", "swapping a class with itself", a, b)
    rng, f = _rng(key), _fraction(severity)
    out = labels.copy()
    out[_pick(rng, labels == a, f)] = b
    out[_pick(rng, labels == b, f)] = a
    return images.copy(), out


def relabel(images, labels, key, severity=5, a=0, b=1):
    _two_classes("relabel", "relabelling a class as itself", a, b)
    out = labels.copy()
    out[_pick(_rng(key), labels == a, _fraction(severity))] = b
    return images.copy(), out


def label_noise(images, labels, key, severity=5, num_classes=None):
    rng = _rng(key)
    num_classes = num_classes or int(labels.max()) + 1
    out = labels.copy()
    chosen = _pick(rng, np.ones(len(labels), bool), 0.1 * severity)
    out[chosen] = rng.integers(0, num_classes, chosen.size)
    return images.copy(), out


def _rotate(images: np.ndarray, degrees: float) -> np.ndarray:
    return np.clip(ndimage.rotate(images.astype(np.float32), degrees, axes=(1, 2), reshape=False,
                                  order=1, mode="nearest"), 0, 255).round().astype(np.uint8)


def class_transform(images, labels, key, severity=5, a=0, kind="invert"):
    rng = _rng(key)
    out = images.copy()
    chosen = _pick(rng, labels == a, _fraction(severity))
    if kind == "invert":
        out[chosen] = 255 - out[chosen]
    elif kind == "rotate":
        out[chosen] = _rotate(out[chosen], 90.0)
    elif kind == "colour":
        if images.shape[-1] == 3:
            out[chosen] = out[chosen][..., ::-1]  # RGB -> BGR
        else:
            out[chosen] = (out[chosen] // 2 + 128).astype(np.uint8)
    else:
        raise DriftJaxError(f"class_transform kind must be rotate, invert or colour, got {kind!r}.")
    return out, labels.copy()


def _as_float(images):
    return images.astype(np.float32) / 255.0


def _to_uint8(x):
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def gaussian_noise(images, labels, key, severity=5):
    x = _as_float(images) + 0.04 * severity * _rng(key).standard_normal(images.shape)
    return _to_uint8(x), labels.copy()


def blur(images, labels, key, severity=5):
    sigma = (0.0, 0.3 * severity, 0.3 * severity, 0.0)
    return _to_uint8(ndimage.gaussian_filter(_as_float(images), sigma)), labels.copy()


def brightness(images, labels, key, severity=5):
    return _to_uint8(_as_float(images) + 0.08 * severity), labels.copy()


def contrast(images, labels, key, severity=5):
    x = _as_float(images)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return _to_uint8(mean + (x - mean) * (1 - 0.15 * severity)), labels.copy()


def pixelate(images, labels, key, severity=5):
    if severity == 0:
        return images.copy(), labels.copy()
    factor = 1 + severity  # block size in pixels
    h, w = images.shape[1:3]
    small = images[:, ::factor, ::factor]
    big = np.repeat(np.repeat(small, factor, axis=1), factor, axis=2)[:, :h, :w]
    return np.ascontiguousarray(big), labels.copy()


def rotation(images, labels, key, severity=5):
    return _rotate(images, 6.0 * severity), labels.copy()


def prior_shift(images, labels, key, severity=5, classes=(0, 1)):
    rng = _rng(key)
    drop = np.concatenate([_pick(rng, labels == c, 0.18 * severity) for c in classes])
    keep = np.setdiff1d(np.arange(len(labels)), drop)
    return images[keep], labels[keep]


SCENARIOS: dict[str, Callable] = {
    "none": none, "label_swap": label_swap, "relabel": relabel, "label_noise": label_noise,
    "class_transform": class_transform, "gaussian_noise": gaussian_noise, "blur": blur,
    "brightness": brightness, "contrast": contrast, "pixelate": pixelate, "rotation": rotation,
    "prior_shift": prior_shift,
}


def apply(name: str, images: np.ndarray, labels: np.ndarray, key: jax.Array, severity: int = 5,
          **params) -> tuple[np.ndarray, np.ndarray]:
    """Applies scenario ``name``; unknown names and parameters raise DriftJaxError."""
    if name not in SCENARIOS:
        raise DriftJaxError(f"unknown drift scenario {name!r}; choose one of "
                            f"{', '.join(SCENARIOS)}.")
    _fraction(severity)  # validates the range
    try:
        return SCENARIOS[name](images, labels, key, severity, **params)
    except TypeError as e:
        raise DriftJaxError(f"scenario {name}: bad parameters {params} ({e}).") from e
