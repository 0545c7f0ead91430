import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _default_local_data(root: Path) -> None:
    """Points DRIFT_JAX_DATA_DIR (drift_jax.data.sources) at the offline dataset folder beside
    the repository when the variable is unset and that folder exists, so the tests that need real
    data run here and skip elsewhere. Set before any test runs, subprocesses inherit it."""
    beside = root.parent / "shared" / "datasets"
    if not os.environ.get("DRIFT_JAX_DATA_DIR") and beside.is_dir():
        os.environ["DRIFT_JAX_DATA_DIR"] = str(beside)


_default_local_data(ROOT)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DRIFT_JAX_CACHE", str(tmp_path / "cache"))


def require_local_copy(name: str, split: str) -> Path:
    """The local copy of tfds:NAME:SPLIT under DRIFT_JAX_DATA_DIR; skips the test without it."""
    from drift_jax import data

    path = data.local_copy(name, split)
    if path is None:
        pytest.skip(f"no local copy of {name}:{split} (set DRIFT_JAX_DATA_DIR to a folder of "
                    "local dataset copies)")
    return path


def run_python(code: str, env_extra: dict | None = None, timeout: int = 600) -> str:
    """Runs code in a fresh interpreter (XLA flags such as the virtual device count only take
    effect before JAX starts); returns stdout, fails the test with stderr on error."""
    env = {**os.environ, **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        pytest.fail(f"subprocess failed:\n{proc.stderr[-4000:]}")
    return proc.stdout


def make_images(n=20, size=8, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def save_production_model(path: Path):
    """A SeedCNN trained on half of synthetic?n=400&classes=4&size=8, saved as a stack of one
    at ``path``: a production model given instead of production data. Returns (spec,
    variables)."""
    import jax

    from drift_jax import data, stack
    from drift_jax.config import TrainConfig
    from drift_jax.models import ModelSpec

    ds = data.synthetic(n=400, classes=4, size=8)
    spec = ModelSpec("seedcnn", 4, ds.image_shape)
    v = stack.init_stack(spec, jax.random.split(jax.random.key(5), 1))
    prod = stack.train_stack(spec, v, ds.images, ds.labels, [np.arange(200)],
                             TrainConfig(epochs=2), jax.random.key(6), progress=False).variables
    stack.save_stack(path, spec, prod)
    return spec, prod
