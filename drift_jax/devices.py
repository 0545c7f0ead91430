"""The device mesh a stack runs on: a ``models`` axis and a ``data`` axis over all devices."""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from drift_jax.errors import DriftJaxError

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
    if coordinator is None and num_processes is None and process_id is None:
        check_slurm_environment()
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)


# What `jax.distributed.initialize` reads to detect a SLURM job step (jax's SlurmCluster), and
# parses without checks: the job id, the step's node list, the task count and this task's ranks.
SLURM_STEP_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                        "SLURM_LOCALID")


def check_slurm_environment() -> None:
    """Inside a SLURM job, the variables JAX will detect it by are complete and well formed; a
    problem is one error naming the variable (JAX would raise deep in its startup, or silently
    not detect the job and ask for a coordinator)."""
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        return  # not a SLURM job: JAX's other detections apply
    missing = [name for name in SLURM_STEP_VARIABLES if name not in env]
    if missing:
        raise DriftJaxError(f"inside SLURM job {env['SLURM_JOB_ID']} but {', '.join(missing)} "
                            "is not set (a job step started without srun?); start every process "
                            "with srun, or pass coordinator, num_processes and process_id.")
    numbers = {}
    for name in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"):
        try:
            numbers[name] = int(env[name])
        except ValueError:
            raise DriftJaxError(f"the environment variable {name}={env[name]!r} is not an "
                                "integer; fix or unset it, or pass coordinator, num_processes "
                                "and process_id.") from None
    if not env["SLURM_STEP_NODELIST"].strip():
        raise DriftJaxError("SLURM_STEP_NODELIST is empty; start the processes with srun, or pass "
                            "coordinator, num_processes and process_id.")
    if not 0 <= numbers["SLURM_PROCID"] < numbers["SLURM_NTASKS"]:
        raise DriftJaxError(f"SLURM_PROCID={numbers['SLURM_PROCID']} is not a task of "
                            f"SLURM_NTASKS={numbers['SLURM_NTASKS']}; fix or unset them, or pass "
                            "coordinator, num_processes and process_id.")
