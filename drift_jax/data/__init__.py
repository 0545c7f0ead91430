"""Data: the `Dataset` type, its sources and seeded stratified splits."""

from drift_jax.data.dataset import Dataset, from_float_images
from drift_jax.data.sources import digits, folder, idx, load, synthetic, tfds
from drift_jax.data.splits import Split, base_production_holdout, stratified_split

__all__ = ["Dataset", "Split", "base_production_holdout", "digits", "folder", "from_float_images",
           "idx", "load", "stratified_split", "synthetic", "tfds"]
