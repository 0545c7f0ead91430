import os

import jax

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
