"""How a model stack executes, per backend: the config, the measured defaults, and the one
helper that applies a function to every member (batched or one after another). The math is the
same for every choice; the choice is recorded in every result."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax

from drift_jax.errors import DriftJaxError
from drift_jax.validate import bounded, check_fields


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
    """How a model stack executes; the math is the same for every choice.

    ``auto`` resolves per backend from measurements (`EXECUTION_DEFAULTS`).
      member_mode: 'vmap' (members batched in one op), 'map' (members one after another inside
        the compiled step, `lax.map`) or 'loop' (training dispatches each member's compiled chunk
        in turn; inside other single programs it means 'map').
      scan_chunk: train steps fused into one `lax.scan` per dispatch (0 = auto).
      conv_form: 'canonical' (custom VJP, fast in loops), 'autodiff' (plain `lax.conv`) or
        'im2col' (patches @ kernel: batched matrix products when members are vmapped).
      pool_form: 'reshape' (reshape-max) or 'flax' (`flax.linen.max_pool`).
    """

    member_mode: Literal["auto", "vmap", "map", "loop"] = "auto"
    scan_chunk: int = bounded(0, ge=0)
    conv_form: Literal["auto", "canonical", "autodiff", "im2col"] = "auto"
    pool_form: Literal["auto", "reshape", "flax"] = "auto"

    def __post_init__(self):
        check_fields(self)


# CPU: chosen by `scripts/bench_train.py` (BENCHMARKS.md) on the project's 2-core machine, jax
# 0.10.2: members one after another inside the step beat vmap, whose convolutions over members'
# weights lower to grouped convolutions (about half the rate there). GPU/TPU: vmap batches the
# members into wide kernels (docs/DESIGN.md). One H200 probe (jax 0.11.2,
# scripts/probes/gpu_throughput.py) found no
# form that scales yet: 16 members 240k (vmap), 247k (map), 328k (loop) model-images/s against
# 279k for one model; `scripts/bench_gpu.py` measures the candidates (im2col convs among them)
# to choose this default from.
EXECUTION_DEFAULTS = {
    "cpu": ExecutionConfig(member_mode="map", scan_chunk=32, conv_form="canonical",
                           pool_form="reshape"),
    "gpu": ExecutionConfig(member_mode="vmap", scan_chunk=64, conv_form="canonical",
                           pool_form="reshape"),
    "tpu": ExecutionConfig(member_mode="vmap", scan_chunk=64, conv_form="canonical",
                           pool_form="reshape"),
}


def resolve_execution(config: ExecutionConfig, backend: str | None = None) -> ExecutionConfig:
    """Fills every ``auto`` field with the backend's measured default."""
    default = EXECUTION_DEFAULTS.get(backend or jax.default_backend(), EXECUTION_DEFAULTS["gpu"])
    return ExecutionConfig(
        member_mode=default.member_mode if config.member_mode == "auto" else config.member_mode,
        scan_chunk=config.scan_chunk or default.scan_chunk,
        conv_form=default.conv_form if config.conv_form == "auto" else config.conv_form,
        pool_form=default.pool_form if config.pool_form == "auto" else config.pool_form,
    )


def map_members(fn, mode: str, *args):
    """Applies ``fn`` to every member (leading axis of each arg): batched or one at a time."""
    if mode == "vmap":
        return jax.vmap(fn)(*args)
    if mode in ("map", "loop"):  # inside one program, 'loop' can only mean lax.map
        if jax.tree.leaves(args)[0].shape[0] == 1:  # one member: no loop around it
            out = fn(*jax.tree.map(lambda a: a[0], args))
            return jax.tree.map(lambda a: a[None], out)
        return jax.lax.map(lambda a: fn(*a), args)
    raise DriftJaxError(f"execution.member_mode must be 'vmap', 'map' or 'loop', got {mode!r}.")
