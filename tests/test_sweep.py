import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from drift_jax import aggregate, cli, sweep
from drift_jax.detect import DetectConfig
from drift_jax.errors import DriftJaxError

SMALL = {"base": "synthetic?n=400&classes=4&size=8", "controls": 3, "train": {"epochs": 2},
         "inversion": {"samples_per_class": 2, "miface": {"max_iter": 20, "init": "uniform"}},
         "permutations": 50, "attack_fit_size": 100, "attacks": ["rule_based"]}
GRID = {"seed": [0, 1], "scenario": ["none", "label_swap"]}


def _sweep_file(tmp_path):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"detect": SMALL, "grid": GRID}))
    return path


def _reports(folder) -> dict:
    out = {}
    for path in sorted((folder / "runs").glob("*/report.json")):
        r = json.loads(path.read_text())
        r.pop("timings"), r.pop("environment")
        with np.load(path.parent / "gray.npz") as z:
            r["gray"] = z["images"].round(6).tolist()
        out[path.parent.name] = r
    return out


def _cli(*args):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen([sys.executable, "-m", "drift_jax.cli", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_sweep_killed_with_sigkill_resumes_to_the_uninterrupted_results(tmp_path):
    config = _sweep_file(tmp_path)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert _cli("sweep", str(config), "--out", str(whole), "--quiet").wait() == 0
    proc = _cli("sweep", str(config), "--out", str(killed), "--quiet")
    deadline = time.time() + 300
    while not list(killed.glob("runs/*/report.json")) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-sweep: the first run written, others not
    proc.wait()
    finished = len(list(killed.glob("runs/*/report.json")))
    assert 1 <= finished < 4
    for path in killed.glob("runs/*/report.json"):
        json.loads(path.read_text())  # every report on disk is whole
    again = _cli("sweep", str(config), "--out", str(killed), "--quiet")
    out = again.communicate()[0].decode()
    assert again.returncode == 0, out
    assert f"already finished {finished}" in out
    assert _reports(killed) == _reports(whole)
    assert len(_reports(whole)) == 4


def test_points_ids_and_seed_groups():
    cfg = sweep.SweepConfig(DetectConfig(), {"seed": [0, 1, 2], "severity": [2, 5]})
    points = sweep.points(cfg)
    assert [(p.seed, p.severity) for p in points] == [(s, v) for s in (0, 1, 2) for v in (2, 5)]
    assert len({sweep.run_id(p) for p in points}) == 6
    assert sweep.run_id(points[0]) == sweep.run_id(sweep.points(cfg)[0])  # stable
    groups = sweep.seed_groups(points)
    assert [[p.seed for p in g] for g in groups] == [[0, 1, 2], [0, 1, 2]]
    shares = [sweep.task_share(groups, i, 3) for i in range(3)]
    assert sorted(sum(([sweep.run_id(p) for p in g] for s in shares for g in s), [])) == \
        sorted(sweep.run_id(p) for p in points)  # every point in exactly one task


def test_task_from_slurm_variables(monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MAX", "7")
    assert sweep.task_from_env(None, None) == (1, 4)
    assert sweep.task_from_env(0, 2) == (0, 2)  # explicit flags win
    with pytest.raises(DriftJaxError, match="outside 0..1"):
        sweep.task_from_env(2, 2)


def test_grid_parsing_and_bad_grids(tmp_path):
    assert sweep.parse_grid(["seed=0,1", 'scenario="none","blur"', "arch=resnet"]) == {
        "seed": [0, 1], "scenario": ["none", "blur"], "arch": ["resnet"]}
    with pytest.raises(DriftJaxError, match="key=v1,v2"):
        sweep.parse_grid(["seed"])
    with pytest.raises(DriftJaxError, match="unknown key 'sed'"):
        sweep.points(sweep.SweepConfig(DetectConfig(), {"sed": [1]}))
    with pytest.raises(DriftJaxError, match="non-empty list"):
        sweep.SweepConfig(DetectConfig(), {"seed": []})
    bad = tmp_path / "bad.json"
    bad.write_text('{"detect": {"contrls": 3}}')
    with pytest.raises(DriftJaxError, match="unknown config key"):
        sweep.load(bad)


def test_tasks_write_their_own_runs_and_report_merges_them(tmp_path, capsys):
    config = _sweep_file(tmp_path)
    for task in ("0", "1"):
        assert cli.main(["sweep", str(config), "--out", str(tmp_path / f"task{task}"),
                         "--task-index", task, "--num-tasks", "2", "--quiet"]) == 0
    runs = {p.parent.name for p in tmp_path.glob("task*/runs/*/report.json")}
    assert len(runs) == 4
    assert not {p.name for p in (tmp_path / "task0/runs").iterdir()} & \
        {p.name for p in (tmp_path / "task1/runs").iterdir()}
    assert cli.main(["report", str(tmp_path), "--out", str(tmp_path / "merged")]) == 0
    summary = json.loads((tmp_path / "merged" / "summary.json").read_text())
    assert summary["runs"] == 4 and summary["group_keys"] == ["scenario"]
    rows = {g["scenario"]: g for g in summary["groups"]}
    assert rows["none"]["runs"] == rows["label_swap"]["runs"] == 2
    assert rows["label_swap"]["swap_classes"] is not None and rows["none"]["swap_classes"] is None
    assert "attack:rule_based" in summary["methods"]
    assert (tmp_path / "merged" / "runs.csv").read_text().count("\n") == 5
    assert (tmp_path / "merged" / "figures" / "nulls_rule_based.png").exists()
    assert "| scenario | runs |" in capsys.readouterr().out


def test_report_of_an_empty_folder_says_what_is_missing(tmp_path):
    with pytest.raises(DriftJaxError, match="no finished runs"):
        aggregate.collect(tmp_path)
    with pytest.raises(DriftJaxError, match="is not a folder"):
        aggregate.collect(tmp_path / "nope")


def test_keys_joined_by_commas_move_together():
    cfg = sweep.SweepConfig(DetectConfig(), {
        "inversion.miface.max_iter,inversion.regularized.steps": [[10, 20], [30, 40]]})
    assert [(p.inversion.miface.max_iter, p.inversion.regularized.steps)
            for p in sweep.points(cfg)] == [(10, 20), (30, 40)]
    with pytest.raises(DriftJaxError, match="must list 2 values"):
        sweep.points(sweep.SweepConfig(DetectConfig(), {"seed,severity": [[1]]}))


def test_shipped_experiment_configs_resolve():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[1] / "experiments").glob("*.json")):
        points = sweep.points(sweep.load(path))
        assert points, path
        assert len({sweep.run_id(p) for p in points}) == len(points), path


def test_points_differing_in_inversion_share_one_training(tmp_path):
    from drift_jax import config as config_lib
    from drift_jax.detect import detect_drift
    from drift_jax.report import report_to_json

    base = config_lib.from_dict(DetectConfig, SMALL)
    cfg = sweep.SweepConfig(base, {"inversion.miface.max_iter": [10, 20]})
    sweep.run_sweep(cfg, tmp_path, progress=False)
    reports = {p.inversion.miface.max_iter: json.loads(
        (tmp_path / "runs" / sweep.run_id(p) / "report.json").read_text())
        for p in sweep.points(cfg)}
    assert reports[10]["timings"]["train_reused"] == 0
    assert reports[20]["timings"]["train_reused"] == 1
    fresh = report_to_json(detect_drift(sweep.points(cfg)[1], progress=False))
    for r in (reports[20], fresh):
        r.pop("timings"), r.pop("environment")
    assert json.dumps(reports[20]) == json.dumps(json.loads(json.dumps(fresh)))


def test_the_training_cache_key_covers_every_field_training_reads():
    """A sweep reuses a trained stack only across fields read after training: a field outside
    `detect.AFTER_TRAINING` (including one added later) changes the key."""
    import dataclasses

    from drift_jax.detect import AFTER_TRAINING, cache_key

    base = DetectConfig()
    changed = {"base": "synthetic", "severity": 2, "controls": 3, "arch": "resnet",
               "control_data": "pooled", "train": dataclasses.replace(base.train, epochs=1),
               "inversion": dataclasses.replace(base.inversion, samples_per_class=2),
               "alpha": 0.1, "stat": "mean"}
    for field, value in changed.items():
        other = dataclasses.replace(base, **{field: value})
        same = cache_key(other, [0]) == cache_key(base, [0])
        assert same is (field in AFTER_TRAINING), field
    assert cache_key(base, [0]) != cache_key(base, [1])
    assert {f.name for f in dataclasses.fields(DetectConfig)} > AFTER_TRAINING
