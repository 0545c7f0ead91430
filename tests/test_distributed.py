"""One training run over 2 processes (jax.distributed over loopback, gloo collectives, 2 CPU
devices each) equals the same run in one process with 4 devices."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).parent / "workers" / "distributed_train.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(out, process_id, num_processes, port, device_count):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={device_count}",
           "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, str(WORKER), str(out), str(process_id),
                             str(num_processes), str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc) -> None:
    out = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == 0, out[-3000:]


@pytest.mark.slow
def test_two_processes_over_loopback_match_one_process(tmp_path):
    port = _free_port()
    procs = [_start(tmp_path / f"rank{i}.npz", i, 2, port, 2) for i in range(2)]
    for p in procs:
        _finish(p)
    _finish(_start(tmp_path / "single.npz", 0, 1, port, 4))
    single = np.load(tmp_path / "single.npz")
    ranks = [np.load(tmp_path / f"rank{i}.npz") for i in range(2)]
    # Same global mesh (models 2 x data 2) in both set-ups.
    assert single["mesh"].tolist() == ranks[0]["mesh"].tolist() == [2, 2]
    for key in single.files:
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key])  # every process agrees
        np.testing.assert_allclose(ranks[0][key], single[key], rtol=1e-4, atol=1e-5,
                                   err_msg=key)
