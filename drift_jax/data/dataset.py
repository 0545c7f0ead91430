"""The `Dataset` every stage consumes: uint8 NHWC images, int32 labels, class names, a name."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from drift_jax.errors import DriftJaxError


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """An image-classification dataset held in host memory.

    Attributes:
      images: uint8 [N, H, W, C], values 0..255 (models scale to [0, 1]).
      labels: int32 [N], values in 0..num_classes-1.
      class_names: one name per class; its length is the number of classes.
      name: where it came from (a spec string or a description).
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    name: str = "dataset"

    def __post_init__(self):
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray):
            raise DriftJaxError(
                f"{self.name}: images must be a numpy array, got {type(images).__name__}; "
                "convert with np.asarray(images)."
            )
        if images.ndim != 4:
            hint = " (add a channel axis: images[..., None])" if images.ndim == 3 else ""
            raise DriftJaxError(
                f"{self.name}: images must have rank 4 [N, H, W, C], got shape "
                f"{images.shape}{hint}."
            )
        if images.shape[-1] not in (1, 3):
            raise DriftJaxError(
                f"{self.name}: images must be NHWC with 1 or 3 channels, got shape {images.shape}; "
                "if they are NCHW, transpose with images.transpose(0, 2, 3, 1)."
            )
        if images.dtype != np.uint8:
            if np.issubdtype(images.dtype, np.floating):
                fix = "scale floats in [0, 1] with (images * 255).round().astype(np.uint8)"
            else:
                fix = "convert with images.astype(np.uint8) after checking the range is 0..255"
            raise DriftJaxError(f"{self.name}: images must be uint8, got {images.dtype}; {fix}.")
        if images.shape[0] == 0:
            raise DriftJaxError(f"{self.name}: the dataset is empty; pass at least one image.")
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DriftJaxError(
                f"{self.name}: labels must have shape [{images.shape[0]}] (one per image), "
                f"got {labels.shape}."
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise DriftJaxError(
                f"{self.name}: labels must be integers, got {labels.dtype}; "
                "map class names to indices 0..C-1 first."
            )
        num_classes = len(self.class_names)
        if num_classes < 2:
            raise DriftJaxError(f"{self.name}: need at least 2 class names, got {num_classes}.")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise DriftJaxError(
                f"{self.name}: labels must lie in 0..{num_classes - 1} for {num_classes} classes, "
                f"found {lo}..{hi}; pass one class name per label value."
            )
        object.__setattr__(self, "labels", labels.astype(np.int32, copy=False))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> Dataset:
        indices = np.asarray(indices)
        return Dataset(self.images[indices], self.labels[indices], self.class_names,
                       name or f"{self.name}[subset]")

    def summary(self) -> dict:
        return {
            "name": self.name,
            "size": len(self),
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "class_counts": {c: int(n) for c, n in zip(self.class_names, self.class_counts())},
        }


def from_float_images(images, labels, class_names, name="dataset") -> Dataset:
    """Builds a Dataset from float images in [0, 1] (NaN, Inf and out-of-range values rejected)."""
    images = np.asarray(images)
    if not np.issubdtype(images.dtype, np.floating):
        raise DriftJaxError(f"{name}: from_float_images expects floats, got {images.dtype}.")
    if not np.isfinite(images).all():
        raise DriftJaxError(f"{name}: images contain NaN or Inf; clean or drop those images.")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 1:
        raise DriftJaxError(
            f"{name}: float images must lie in [0, 1], found {lo:.3g}..{hi:.3g}; "
            "divide 0..255 data by 255."
        )
    return Dataset((images * 255).round().astype(np.uint8), labels, class_names, name)
