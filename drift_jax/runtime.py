"""XLA:CPU settings chosen by measurement, and a record of the execution environment.

Measured on the project's 2-core CPU machine, jax 0.10.2 (`scripts/bench_train.py`):
XLA:CPU's YNNPACK fusions (on by default in this jaxlib) made the SeedCNN train step about 2x
slower (1,100 -> 2,400 images/s with them off). We switch them off unless the user already set the
flag or opts out with ``DRIFT_JAX_XLA_DEFAULTS=0``. The flag only affects the CPU backend.
"""

from __future__ import annotations

import os
import platform

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# '-' removes a type from XLA's default list; these are all the types this jaxlib knows.
YNN_OFF = f"{YNN_FLAG}=-individual_convolution,-reduce,-dot,-eltwise,-individual_dot"


def apply_xla_cpu_defaults() -> bool:
    """Adds the measured XLA:CPU flags to ``XLA_FLAGS`` unless opted out. Returns whether it did.

    Must run before JAX initialises its backends (XLA reads ``XLA_FLAGS`` once, then).
    """
    if os.environ.get("DRIFT_JAX_XLA_DEFAULTS", "1") == "0":
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    if YNN_FLAG in flags:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {YNN_OFF}".strip()
    return True


def environment() -> dict:
    """Versions, devices and XLA flags, recorded beside every result."""
    import flax
    import jax
    import optax

    return {
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


class CompileCounter:
    """Counts XLA backend compilations while active: ``with CompileCounter() as c: ...; c.count``.

    Used to hold every stage to one compile per shape (tests and result records).
    """

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count = 0

    def _listener(self, event: str, duration: float, **_) -> None:
        if event == self.EVENT:
            self.count += 1

    def __enter__(self) -> CompileCounter:
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc) -> None:
        import jax.monitoring

        jax.monitoring.unregister_event_duration_listener(self._listener)
