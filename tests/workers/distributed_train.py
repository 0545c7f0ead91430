"""One process of a data-parallel training run: ``python distributed_train.py OUT.npz
PROCESS_ID NUM_PROCESSES PORT`` (NUM_PROCESSES 1: a plain single-process run)."""

import sys

import jax
import numpy as np

from drift_jax import data, devices, stack
from drift_jax.config import TrainConfig
from drift_jax.models import ModelSpec

out, process_id, num_processes, port = sys.argv[1], *map(int, sys.argv[2:])
if num_processes > 1:
    devices.initialize_distributed(f"127.0.0.1:{port}", num_processes, process_id)
ds = data.digits()
spec = ModelSpec("seedcnn", 10, ds.image_shape)
variables = stack.init_stack(spec, jax.random.split(jax.random.key(0), 2))
result = stack.train_stack(spec, variables, ds.images, ds.labels,
                           [np.arange(0, 800), np.arange(800, 1500)], TrainConfig(epochs=2),
                           jax.random.key(1), progress=False)
np.savez(out, mesh=np.array(list(result.mesh["shape"].values())),
         loss=np.array(result.history["loss"]),
         **{str(i): np.asarray(x) for i, x in enumerate(jax.tree.leaves(result.variables))})
