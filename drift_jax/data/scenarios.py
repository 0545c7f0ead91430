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

Scenarios of overhead (aerial) imagery:

  land_use(a, b)           land-use conversion: a fraction severity/5 of class a (e.g. Meadow)
                           is labelled b (e.g. Farmland); the images stay as they were
  seasonal(a, kind)        class a's images only: autumn | snow | low_sun colour, saturation and
                           brightness change, strength severity/5 (RGB images only)
  sensor                   a new sensor for all images: colour balance, blur, resolution loss
                           (down- then up-sampling) and noise, each growing with severity
  cloud                    a fraction severity/5 of the images under haze and smooth random
                           clouds covering about 0.1 * severity of each image

Class parameters (``a``, ``b``, ``classes``) are class indices or, with ``class_names`` given to
`apply`, class names (matched ignoring case, spaces, ``_`` and ``-``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

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


# --- Overhead (aerial) imagery ------------------------------------------------------------------


def land_use(images, labels, key, severity=5, a=0, b=1):
    """Land-use conversion: the ground of class ``a`` now serves as class ``b`` (a meadow
    ploughed into farmland, sparse housing filled in to medium density), so a share severity/5
    of class a's images [n, H, W, ch] is labelled b [n] while the images stay as they were. The
    same draw as `relabel`, named for what it means on aerial imagery."""
    return relabel(images, labels, key, severity, a, b)


class _Season(NamedTuple):
    """A seasonal / illumination change at full strength (severity 5); severity s scales every
    field by s / 5, so severity 0 is the identity."""

    vegetation_hue: float = 0.0  # degrees green pixels turn on the hue circle (< 0: to red)
    saturation: float = 0.0  # relative change of every pixel's distance from its grey
    contrast: float = 0.0  # relative change of the distance from the image's mean luminance
    brightness: float = 0.0  # relative change of every channel
    snow_cover: float = 0.0  # share of the way to white of open ground (`_open_ground`)
    warmth: float = 0.0  # red gain up and blue gain down by this share (< 0: bluer)


SEASONS = {
    # Leaves and grass turn brown: green goes to orange-brown, duller and a little darker.
    "autumn": _Season(vegetation_hue=-80.0, saturation=-0.3, brightness=-0.1, warmth=0.08),
    # Snow cover: open ground white, greyer, with the blue cast of snow in daylight; tree
    # canopies, shadows and water stay dark, which is what makes snow scenes look high-contrast.
    "snow": _Season(saturation=-0.6, snow_cover=0.8, warmth=-0.08),
    # A low sun: long shadows make the scene darker and its contrast higher, the light warmer.
    "low_sun": _Season(contrast=0.5, brightness=-0.35, warmth=0.12),
}

_LUMINANCE = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 weights of R, G, B


def _hue_rotation(degrees: float) -> np.ndarray:
    """The 3x3 matrix that turns RGB colours by ``degrees`` about the grey axis (positive: red
    towards green), keeping each pixel's channel mean."""
    theta = np.deg2rad(degrees)
    cross = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], np.float32)
    return (np.cos(theta) * np.eye(3) + (1 - np.cos(theta)) / 3 * np.ones((3, 3))
            + np.sin(theta) / np.sqrt(3) * cross).astype(np.float32)


def _greenness(x: np.ndarray) -> np.ndarray:
    """x [..., 3] RGB in [0, 1] -> [...] in [0, 1]: how plainly a pixel is vegetation green
    (green above both red and blue by 0.08 or more: 1), a ramp so the change has no edges."""
    return np.clip((x[..., 1] - np.maximum(x[..., 0], x[..., 2])) / 0.08, 0.0, 1.0)


def _open_ground(grey: np.ndarray) -> np.ndarray:
    """grey [...] luminance in [0, 1] -> [...] in [0, 1]: how open a pixel's ground is, read
    from its brightness (0 at or below 0.15: canopy, shadow, water, where snow does not show
    from above; 1 from 0.45 up), a ramp so the snow has no edges."""
    return np.clip((grey - 0.15) / 0.3, 0.0, 1.0)


def _season_shift(x: np.ndarray, season: _Season, strength: float) -> np.ndarray:
    """x [n, H, W, 3] RGB in [0, 1] -> the same shape after ``season`` at ``strength`` in [0, 1]
    (not clipped). Each step is the identity at strength 0."""
    rotated = x @ _hue_rotation(season.vegetation_hue * strength).T
    x = x + _greenness(x)[..., None] * (rotated - x)
    grey = (x @ _LUMINANCE)[..., None]
    x = grey + (x - grey) * (1 + season.saturation * strength)
    mean = grey.mean(axis=(1, 2), keepdims=True)
    x = mean + (x - mean) * (1 + season.contrast * strength)
    x = x * (1 + season.brightness * strength)
    x = x + (1 - x) * (season.snow_cover * strength) * _open_ground(grey)
    warmth = season.warmth * strength
    return x * np.array([1 + warmth, 1.0, 1 - warmth], np.float32)


def _require_rgb(images: np.ndarray, scenario: str) -> None:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DriftJaxError(f"scenario {scenario} changes colours and needs RGB images "
                            f"[n, H, W, 3]; got shape {images.shape}.")


def seasonal(images, labels, key, severity=5, a=0, kind="autumn"):
    """A season or light that reaches one class's ground only (its fields brown in autumn, its
    roofs and lawns under snow, its scenes flown at a low sun): every image of class ``a`` in
    ``images`` [n, H, W, 3] uint8 RGB is colour-shifted by ``kind`` (a key of `SEASONS`:
    autumn, snow or low_sun) at strength severity/5; other classes' images and all ``labels``
    [n] are unchanged. Grey images are refused: the change is one of colour. ``key`` is
    unused: the change is the same for every image of the class."""
    _require_rgb(images, "seasonal")
    if kind not in SEASONS:
        raise DriftJaxError(f"seasonal kind must be one of {', '.join(SEASONS)}, got {kind!r}.")
    out = images.copy()
    chosen = labels == a
    out[chosen] = _to_uint8(_season_shift(_as_float(images[chosen]), SEASONS[kind],
                                          _fraction(severity)))
    return out, labels.copy()


def _resize_linear_axis(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear interpolation of x along ``axis`` to ``size`` samples, pixel centres aligned (the
    identity when the size is unchanged)."""
    n = x.shape[axis]
    position = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, n - 1)
    shape = [1] * x.ndim
    shape[axis] = size
    weight = (position - low).astype(x.dtype).reshape(shape)
    return np.take(x, low, axis) * (1 - weight) + np.take(x, high, axis) * weight


def _resize_linear(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """x [n, H, W, ch] -> [n, height, width, ch] by bilinear interpolation."""
    return _resize_linear_axis(_resize_linear_axis(x, height, 1), width, 2)


def sensor(images, labels, key, severity=5):
    """A new sensor for every image of ``images`` [n, H, W, ch] uint8 (``labels`` [n]
    unchanged), in the order light meets it: a colour balance (channel gains 1 + 0.03 s along
    one random zero-mean direction drawn from ``key``, the same for all images; colour images
    only), optics blur (Gaussian, sigma 0.15 s pixels), a coarser pixel grid (down-sampling by
    1 + 0.3 s with an antialiasing Gaussian of sigma (factor - 1) / 2), read noise at that grid
    (sd 0.01 s, images in [0, 1]) and up-sampling back to H x W (bilinear)."""
    rng, strength = _rng(key), _fraction(severity)
    if severity == 0:
        return images.copy(), labels.copy()
    x = _as_float(images)
    channels = images.shape[-1]
    if channels > 1:
        direction = rng.standard_normal(channels)
        direction -= direction.mean()  # a colour cast, not a brightness change
        direction /= np.abs(direction).max()
        x = x * (1 + 0.15 * strength * direction).astype(np.float32)
    height, width = images.shape[1:3]
    factor = 1 + 0.3 * severity
    sigma = np.hypot(0.15 * severity, (factor - 1) / 2)
    x = ndimage.gaussian_filter(x, (0, sigma, sigma, 0), mode="nearest")
    small = _resize_linear(x, max(1, round(height / factor)), max(1, round(width / factor)))
    small = small + 0.01 * severity * rng.standard_normal(small.shape, np.float32)
    return _to_uint8(_resize_linear(small, height, width)), labels.copy()


CLOUD_GRID = 32  # cloud fields are drawn on at most this many cells a side, then resized


def _cloud_masks(rng, count: int, height: int, width: int, coverage: float) -> np.ndarray:
    """[count, height, width] in [0, 1): smooth random cloud opacity covering about
    ``coverage`` of each image: white noise on a grid of at most `CLOUD_GRID` cells a side,
    low-pass filtered (Gaussian of sigma 1/8 of the side, periodic, in Fourier space) and
    resized to the image (bilinear), thresholded at its (1 - coverage) quantile through a
    sigmoid so the clouds' edges fade, and scaled to an opacity of 0.9 at their cores. The
    coarse grid keeps memory and time independent of the image size (the field is smooth at
    that scale) and gives one key the same cloud shapes at every image size."""
    scale = min(1.0, CLOUD_GRID / max(height, width))
    grid = (max(1, round(height * scale)), max(1, round(width * scale)))
    noise = rng.standard_normal((count, *grid), np.float32)
    side = max(grid) / 8
    smooth = np.fft.irfft2(ndimage.fourier_gaussian(np.fft.rfft2(noise), (0, side, side),
                                                    n=grid[1]), s=grid).astype(np.float32)
    smooth = _resize_linear(smooth[..., None], height, width)[..., 0]
    smooth = (smooth - smooth.mean(axis=(1, 2), keepdims=True)) / (
        smooth.std(axis=(1, 2), keepdims=True) + 1e-6)
    threshold = np.quantile(smooth, 1 - coverage, axis=(1, 2))[:, None, None]
    return (0.9 / (1 + np.exp(-(smooth - threshold) / 0.25))).astype(np.float32)


def cloud(images, labels, key, severity=5):
    """Haze and cloud: a share severity/5 of ``images`` [n, H, W, ch] uint8, drawn from ``key``,
    is seen through a uniform haze (a share 0.05 s of the way to the cloud's grey) and under
    smooth random clouds (`_cloud_masks`) covering about 0.1 s of the image; each image's
    cloud grey is drawn in [0.8, 1] (images in [0, 1]). Other images and ``labels`` [n] are
    unchanged; grey images take the same change."""
    rng = _rng(key)
    out = images.copy()
    chosen = _pick(rng, np.ones(len(images), bool), _fraction(severity))
    if chosen.size == 0:
        return out, labels.copy()
    height, width = images.shape[1:3]
    alpha = _cloud_masks(rng, chosen.size, height, width, 0.1 * severity)[..., None]
    grey = rng.uniform(0.8, 1.0, (chosen.size, 1, 1, 1)).astype(np.float32)
    haze = 0.05 * severity
    x = _as_float(images[chosen]) * (1 - haze) + grey * haze
    out[chosen] = _to_uint8(x * (1 - alpha) + grey * alpha)
    return out, labels.copy()


SCENARIOS: dict[str, Callable] = {
    "none": none, "label_swap": label_swap, "relabel": relabel, "label_noise": label_noise,
    "class_transform": class_transform, "gaussian_noise": gaussian_noise, "blur": blur,
    "brightness": brightness, "contrast": contrast, "pixelate": pixelate, "rotation": rotation,
    "prior_shift": prior_shift, "land_use": land_use, "seasonal": seasonal, "sensor": sensor,
    "cloud": cloud,
}


# Scenario parameters that name one class, and the one that names several.
CLASS_PARAMS = ("a", "b")
CLASSES_PARAM = "classes"


def _name_key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).casefold()


def _class_list(class_names: Sequence[str]) -> str:
    return ", ".join(f"{i} {name}" for i, name in enumerate(class_names))


def class_index(value, class_names: Sequence[str] | None = None, what: str = "class") -> int:
    """A class given by ``value`` (an index, or a name of ``class_names``) -> its index. Names
    match exactly, else ignoring case, spaces, ``_`` and ``-`` ("sparse residential" finds
    SparseResidential). Without ``class_names`` only indices are taken, and only negative ones
    can be refused. ``what`` starts the error message (e.g. "scenario relabel: a")."""
    names = list(class_names) if class_names is not None else None
    valid = (f"the classes are {_class_list(names)}" if names
             else "the data's class names are not known here, so give a class index")
    if isinstance(value, str):
        if names is not None and value in names:
            return names.index(value)
        matches = [i for i, n in enumerate(names or []) if _name_key(n) == _name_key(value)]
        if len(matches) == 1:
            return matches[0]
        raise DriftJaxError(f"{what}={value!r} names no single class; {valid}.")
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise DriftJaxError(f"{what}={value!r} is neither a class name nor an index; {valid}.")
    if value < 0 or (names is not None and value >= len(names)):
        raise DriftJaxError(f"{what}={value!r} is not a class index; {valid}.")
    return int(value)


def resolve_class_params(name: str, params: dict,
                         class_names: Sequence[str] | None = None) -> dict:
    """``params`` of scenario ``name`` with every class parameter it takes (`CLASS_PARAMS`,
    `CLASSES_PARAM`: one name or index, or a list of them) turned into class indices; other
    parameters pass through as given."""
    out = dict(params)
    takes = inspect.signature(SCENARIOS[name]).parameters
    for param in CLASS_PARAMS:
        if param in out and param in takes:
            out[param] = class_index(out[param], class_names, f"scenario {name}: {param}")
    if CLASSES_PARAM in out and CLASSES_PARAM in takes:
        given = out[CLASSES_PARAM]
        given = list(given) if isinstance(given, list | tuple | np.ndarray) else [given]
        out[CLASSES_PARAM] = tuple(class_index(c, class_names, f"scenario {name}: classes")
                                   for c in given)
    return out


def apply(name: str, images: np.ndarray, labels: np.ndarray, key: jax.Array, severity: int = 5,
          class_names: Sequence[str] | None = None, **params) -> tuple[np.ndarray, np.ndarray]:
    """Applies scenario ``name`` to ``images`` [n, H, W, ch] uint8 and ``labels`` [n] with the
    stream ``key`` at ``severity`` (0..5). ``class_names`` (the data's, one per class) lets the
    class parameters be given by name and bounds their indices. Unknown scenarios, parameters
    and classes raise DriftJaxError."""
    if name not in SCENARIOS:
        raise DriftJaxError(f"unknown drift scenario {name!r}; choose one of "
                            f"{', '.join(SCENARIOS)}.")
    _fraction(severity)  # validates the range
    resolved = resolve_class_params(name, params, class_names)
    try:
        return SCENARIOS[name](images, labels, key, severity, **resolved)
    except TypeError as e:
        raise DriftJaxError(f"scenario {name}: bad parameters {params} ({e}).") from e
