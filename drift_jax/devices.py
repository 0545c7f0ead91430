"""The device mesh a stack runs on: a ``models`` axis and a ``data`` axis over all devices."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MODELS, DATA = "models", "data"


def stack_mesh(num_members: int, devices: list | None = None) -> Mesh:
    """Members go over ``models`` as far as they divide evenly; the rest of the devices split the
    batch over ``data`` (gradients all-reduced). 16 members on 4 devices: models=4, data=1;
    2 members on 4 devices: models=2, data=2; 1 member: pure data parallelism."""
    devices = list(devices if devices is not None else jax.devices())
    models = math.gcd(num_members, len(devices))
    grid = np.array(devices, dtype=object).reshape(models, len(devices) // models)
    return Mesh(grid, (MODELS, DATA))


def sharding(mesh: Mesh, *spec) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(*spec))


def describe(mesh: Mesh) -> dict:
    return {"shape": dict(mesh.shape), "devices": [str(d) for d in mesh.devices.flat]}


def to_host(tree):
    """Numpy copies of a pytree of (possibly global, multi-process) arrays; every process gets
    the whole value (an all-gather when the arrays span other processes' devices)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """`jax.distributed.initialize` (arguments auto-detected on SLURM and TPU pods when None),
    with gloo collectives on CPU. After it, `stack_mesh` spans every process's devices: a stack
    trains as one program over the global mesh, each process feeding the same host data."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)
