"""drift_jax: concept-drift detection by model inversion and membership inference, in JAX.

Importing the package sets this project's measured XLA:CPU defaults (see `drift_jax.runtime`)
before JAX creates its backend, and turns on JAX's persistent compilation cache under
``$DRIFT_JAX_CACHE/xla`` (default ``~/.cache/drift_jax/xla``). Opt out with
``DRIFT_JAX_XLA_DEFAULTS=0`` and ``DRIFT_JAX_COMPILATION_CACHE=0`` (or ``drift-jax
--no-compilation-cache``).
"""

from drift_jax import runtime as _runtime

_runtime.apply_xla_cpu_defaults()
_runtime.enable_compilation_cache()

from drift_jax.errors import DriftJaxError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["DriftJaxError", "__version__"]
