"""drift_jax: concept-drift detection by model inversion and membership inference, in JAX.

Importing the package sets this project's measured XLA:CPU defaults (see `drift_jax.runtime`)
before JAX creates its backend; set ``DRIFT_JAX_XLA_DEFAULTS=0`` to keep XLA's own.
"""

from drift_jax import runtime as _runtime

_runtime.apply_xla_cpu_defaults()

from drift_jax.errors import DriftJaxError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["DriftJaxError", "__version__"]
