"""Data: the `Dataset` type, its sources and seeded stratified splits.

``DRIFT_JAX_DATA_DIR`` names a folder of local copies that ``tfds:`` specs read instead of TFDS
(`sources` has the table and the rules).
"""

from drift_jax.data.dataset import Dataset, from_float_images
from drift_jax.data.sources import (
                                    DATA_DIR_ENV,
                                    LOCAL_COPIES,
                                    digits,
                                    folder,
                                    idx,
                                    load,
                                    local_copy,
                                    spec_paths,
                                    synthetic,
                                    tfds,
)
from drift_jax.data.splits import Split, base_production_holdout, stratified_split

__all__ = ["DATA_DIR_ENV", "LOCAL_COPIES", "Dataset", "Split", "base_production_holdout", "digits",
           "folder", "from_float_images", "idx", "load", "local_copy", "spec_paths",
           "stratified_split", "synthetic", "tfds"]
