"""XLA settings chosen by measurement, the persistent compilation cache, compile accounting
per stage, and a record of the execution environment.

Measured on the project's 2-core CPU machine, jax 0.10.2 (`scripts/bench_train.py`):
XLA:CPU's YNNPACK fusions (on by default in this jaxlib) made the SeedCNN train step about 2x
slower (1,100 -> 2,400 images/s with them off). We switch them off unless the user already set the
flag or opts out with ``DRIFT_JAX_XLA_DEFAULTS=0``. The flag only affects the CPU backend.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path

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


COMPILATION_CACHE_ENV = "DRIFT_JAX_COMPILATION_CACHE"


def cache_root() -> Path:
    """drift_jax's cache folder: ``$DRIFT_JAX_CACHE``, else ``~/.cache/drift_jax``."""
    return Path(os.environ.get("DRIFT_JAX_CACHE") or
                Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "drift_jax")


def enable_compilation_cache(directory: str | Path | None = None) -> Path | None:
    """Turns on JAX's persistent compilation cache under ``cache_root() / "xla"``, so a second
    process (a rerun, every sweep task after the first) loads its programs instead of compiling
    them. A folder the user chose (``JAX_COMPILATION_CACHE_DIR``) is kept; off when
    ``DRIFT_JAX_COMPILATION_CACHE=0``. Returns the folder in use, or None."""
    import jax

    if os.environ.get(COMPILATION_CACHE_ENV, "1") == "0":
        return None
    path = Path(directory or jax.config.jax_compilation_cache_dir or cache_root() / "xla")
    if path.exists() and not path.is_dir():
        return None  # a file in the way: run uncached rather than fail (data loading says why)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Our programs are many and small: keep every one (JAX's default keeps those over 1 s).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path


def disable_compilation_cache() -> None:
    import jax

    jax.config.update("jax_enable_compilation_cache", False)


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
        "device_kind": jax.devices()[0].device_kind,  # "cpu", "NVIDIA H200", "TPU v5 lite"
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
    """Counts XLA compilations while active: ``with CompileCounter() as c: ...; c.count``.

    ``count`` is every executable built (compiled, or loaded from the persistent cache),
    ``seconds`` the time spent on them, ``cache_hits`` how many came from the persistent cache.
    Used to hold every stage to one compile per shape (tests and result records).
    """

    EVENT = "/jax/core/compile/backend_compile_duration"
    CACHE_HIT = "/jax/compilation_cache/cache_hits"

    def __init__(self):
        self.count, self.seconds, self.cache_hits = 0, 0.0, 0

    def _duration(self, event: str, duration: float, **_) -> None:
        if event == self.EVENT:
            self.count += 1
            self.seconds += duration

    def _event(self, event: str, **_) -> None:
        if event == self.CACHE_HIT:
            self.cache_hits += 1

    def __enter__(self) -> CompileCounter:
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(self._duration)
        jax.monitoring.register_event_listener(self._event)
        return self

    def __exit__(self, *exc) -> None:
        import jax.monitoring

        jax.monitoring.unregister_event_duration_listener(self._duration)
        jax.monitoring.unregister_event_listener(self._event)

    def record(self) -> dict:
        return {"count": self.count, "seconds": round(self.seconds, 3),
                "cache_hits": self.cache_hits}


class StageClock:
    """Wall seconds and compilations per named stage of a run:
    ``with clock("train"): ...``; ``clock.seconds`` {stage: s}, ``clock.compiles``
    {stage: {count, seconds, cache_hits}}; a stage timed twice adds up."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.compiles: dict[str, dict] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        with CompileCounter() as counter:
            yield
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
        earlier = self.compiles.get(stage, {})
        self.compiles[stage] = {k: round(v + earlier.get(k, 0), 3)
                                for k, v in counter.record().items()}
