import os

import jax
import numpy as np

from drift_jax import runtime


def test_xla_defaults_respect_the_user(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    monkeypatch.delenv("DRIFT_JAX_XLA_DEFAULTS", raising=False)
    assert runtime.apply_xla_cpu_defaults()
    assert os.environ["XLA_FLAGS"].startswith("--xla_force_host_platform_device_count=2 ")
    assert runtime.YNN_OFF in os.environ["XLA_FLAGS"]
    assert not runtime.apply_xla_cpu_defaults()  # already set: left alone
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("DRIFT_JAX_XLA_DEFAULTS", "0")
    assert not runtime.apply_xla_cpu_defaults() and os.environ["XLA_FLAGS"] == ""


def test_environment_names_devices_and_flags():
    env = runtime.environment()
    assert env["backend"] == jax.default_backend() and env["devices"] and "xla_flags" in env


def test_a_stage_timed_twice_adds_up_its_seconds_and_compiles():
    clock, double = runtime.StageClock(), jax.jit(lambda x: x * 2.0)
    counts = []
    for width in (3, 5):  # two shapes: new executables each time
        with runtime.CompileCounter() as alone, clock("stage"):
            double(np.ones(width, np.float32)).block_until_ready()
        counts.append(alone.count)
    assert min(counts) >= 1 and clock.compiles["stage"]["count"] == sum(counts)
    assert clock.seconds["stage"] > 0
