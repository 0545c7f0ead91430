import json
import subprocess
import sys

import pytest

from drift_jax import cli, stack


def test_train_writes_a_complete_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["train", "--data", "synthetic?n=200&classes=4&size=8", "--models", "2",
                   "--epochs", "2", "--out", str(out), "--quiet"])
    assert rc == 0
    assert "holdout accuracy" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["models"] == 2 and cfg["train"]["epochs"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["holdout_accuracy"]) == 2
    assert metrics["execution"]["member_mode"] in ("map", "vmap")
    spec, variables, _ = stack.load_stack(out / "checkpoint")
    assert spec.arch == "seedcnn" and stack.stack_size(variables) == 2


def test_data_info_prints_counts_and_draws(tmp_path, capsys):
    png = tmp_path / "grid.png"
    assert cli.main(["data", "info", "digits", "--out", str(png)]) == 0
    summary = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    assert summary["size"] == 1797 and summary["class_counts"]["0"] == 178
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, message", [
    (["data", "info", "idx:/no/such/dir"], "does not exist"),
    (["train", "--set", "train.bogus=1", "--out", "X"], "unknown key 'train.bogus'"),
    (["train", "--arch", "resnet", "--data", "folder:/missing", "--out", "X"], "does not exist"),
])
def test_user_errors_exit_2_with_one_line(argv, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "drift_jax.cli", *argv], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "X").exists()  # nothing half written
