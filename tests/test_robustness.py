"""The general mechanisms behind bad-input handling (docs/BAD_INPUT.md, second round): a finished
run is never lost, a failed command leaves no half-written folder, everything is validated before
any work, memory is estimated before allocating, files of ours are checked on reading, zero means
zero, messages name the real cause, and Ctrl-C prints one line. One or more tests per class.
From section 9 on: inputs and outputs never alias and the swap checks again, sweeps share a
folder, SIGTERM and the decoder's workers, a real full disk."""

import gc
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from drift_jax import cli, data, faults, stack
from drift_jax.errors import DriftJaxError
from drift_jax.inversion import GrayData
from drift_jax.models import ModelSpec

TRAIN = ["train", "--data", "synthetic?n=120&classes=3&size=8", "--models", "1", "--epochs", "1",
         "--quiet"]


# Kills a command that starts training: a refusal must come before it.
NO_TRAINING = {faults.FAULT_ENV: "stack.train_started"}


def _cli(argv, env=None, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "drift_jax.cli", *argv], capture_output=True,
                          text=True, timeout=600, cwd=cwd,
                          env={**os.environ, **(env or {})})
    return proc.returncode, proc.stderr


def _one_line_error(rc, stderr, *fragments):
    assert rc == 2, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _tree(folder):
    """Every file under a folder with its bytes: what must survive a failed command."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- 1. data loss


@pytest.mark.slow
def test_a_finished_run_is_refused_without_overwrite(tmp_path):
    out = tmp_path / "run"
    assert _cli([*TRAIN, "--out", str(out)])[0] == 0
    before = _tree(out)
    _one_line_error(*_cli([*TRAIN, "--seed", "1", "--out", str(out)]), "finished run",
                    "--overwrite")
    assert _tree(out) == before


@pytest.mark.parametrize("point", ["save_stack.state_written:raise",
                                   "train.checkpoint_saved:raise", "files.folder_written:raise"])
@pytest.mark.slow
def test_a_failed_overwrite_keeps_the_finished_run_whole(tmp_path, point):
    """Overwriting a finished run when the save fails (a full disk, injected at a fixed point):
    the old run is intact and loads, nothing else is left beside it, and one line says why."""
    out = tmp_path / "w" / "run"
    assert _cli([*TRAIN, "--out", str(out)])[0] == 0
    before = _tree(out)
    rc, err = _cli([*TRAIN, "--seed", "1", "--overwrite", "--out", str(out)],
                   env={faults.FAULT_ENV: point})
    _one_line_error(rc, err, "no space left on device")
    assert _tree(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["run"]
    stack.load_stack(out / "checkpoint")
    assert _cli(["invert", "--checkpoint", str(out / "checkpoint"), "--samples", "1",
                 "--iterations", "2", "--quiet", "--out", str(tmp_path / "inv")])[0] == 0


@pytest.mark.slow
def test_overwrite_replaces_a_finished_run(tmp_path):
    out = tmp_path / "w" / "run"
    assert _cli([*TRAIN, "--out", str(out)])[0] == 0
    first = json.loads((out / "config.json").read_text())
    assert _cli([*TRAIN, "--seed", "3", "--overwrite", "--out", str(out)])[0] == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 3 != first["seed"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["run"]


# ----------------------------------------------------------------------------- 2. half-written


@pytest.mark.parametrize("command", ["train", "invert", "detect", "mitigate"])
@pytest.mark.slow
def test_a_full_disk_leaves_no_folder(tmp_path, command):
    detect = ["detect", "--base", "synthetic?n=200&classes=4&size=8", "--quiet",
              "--set", "controls=2", "--set", "alpha=0.5", "--set", "train.epochs=1",
              "--set", "inversion.samples_per_class=1",
              "--set", "inversion.miface.max_iter=5", "--set", 'attacks=["rule_based"]',
              "--set", "permutations=20", "--set", "attack_fit_size=40"]
    if command == "invert":
        assert _cli([*TRAIN, "--out", str(tmp_path / "model")])[0] == 0
    if command == "mitigate":
        assert _cli([*detect, "--out", str(tmp_path / "detect")])[0] == 0
    argv = {"train": TRAIN,
            "invert": ["invert", "--checkpoint", str(tmp_path / "model" / "checkpoint"),
                       "--samples", "1", "--iterations", "2", "--quiet"],
            "detect": detect,
            "mitigate": ["mitigate", "--run", str(tmp_path / "detect"), "--classes", "class_0",
                         "--strategies", "fine_tune", "--quiet"]}[command]
    rc, err = _cli([*argv, "--out", str(tmp_path / "out" / "run")],
                   env={faults.FAULT_ENV: "files.folder_written:raise"})
    _one_line_error(rc, err, "no space left on device")
    assert not (tmp_path / "out").exists()  # not even the parent made for it


def test_a_sweep_with_a_repeated_point_writes_nothing(tmp_path):
    rc, err = _cli(["sweep", "--grid", "seed=0,0", "--out", str(tmp_path / "sw")])
    _one_line_error(rc, err, "same point more than once")
    assert not (tmp_path / "sw").exists()


# ----------------------------------------------------------------------------- 3. validate first


@pytest.mark.parametrize("argv, fragments", [
    (["--set", "train.learning_rate=NaN"], ["train.learning_rate", "finite"]),
    (["--set", "permutations=-5"], ["permutations must be >= 1"]),
    (["--set", "production_fraction=NaN"], ["production_fraction", "finite"]),
    (["--seed", "-1"], ["seed must be >= 0"]),
    (["--set", "inversion.samples_per_class=0"], ["inversion.samples_per_class must be >= 1"]),
    (["--set", "num_shadows=3"], ["num_shadows must be an even number"]),
    (["--set", "inversion.regularized.steps=0"], ["inversion.regularized.steps must be >= 1"]),
])
def test_bad_numbers_are_refused_at_parse_time(argv, fragments, tmp_path):
    rc, err = _cli(["detect", "--quiet", "--out", str(tmp_path / "run"), *argv], env=NO_TRAINING)
    _one_line_error(rc, err, *fragments)  # a run that reached training would die at its start
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_bad_output_paths_are_refused_before_any_work(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out, fragment in [(a_file, "is a file"), (a_file / "run", "which is a file")]:
        for command in (TRAIN, ["detect", "--quiet"]):
            _one_line_error(*_cli([*command, "--out", str(out)]), fragment)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    _one_line_error(*_cli([*TRAIN, "--out", str(other)]), "folder of other files")
    assert (other / "notes.txt").read_text() == "keep me"
    _one_line_error(*_cli(["sweep", "--out", str(other)]), "not a sweep")


# ----------------------------------------------------------------------------- 4. blow-ups


@pytest.mark.parametrize("override, fix", [
    ("inversion.samples_per_class=1000000000", "samples_per_class"),
    ("controls=100000000", "number of models"),
    ("permutations=1000000000", "lower permutations"),
    ("train.batch_size=1000000000", "train.batch_size"),
    ("inversion.miface.window=1000000000000", "samples_per_class"),
])
def test_memory_is_estimated_before_allocating(tmp_path, override, fix):
    _one_line_error(*_cli(["detect", "--quiet", "--set", override, "--out",
                           str(tmp_path / "run")], env=NO_TRAINING), "GiB of host memory", fix)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("attack", ["shadow", "lira"])
def test_shadow_models_are_in_the_memory_estimate(tmp_path, attack):
    """The attacks that train shadow models: refused before the run's models train, not after
    training and inversion."""
    _one_line_error(*_cli(["detect", "--quiet", "--set", f'attacks=["rule_based","{attack}"]',
                           "--set", "num_shadows=100000000", "--out", str(tmp_path / "run")],
                          env=NO_TRAINING), "training 100000000 shadow models",
                    "lower num_shadows", attack)
    assert not (tmp_path / "run").exists()


def test_data_and_training_sizes_are_estimated_too(tmp_path):
    _one_line_error(*_cli(["data", "info", "synthetic?n=100000000000"]), "memory", "lower n")
    _one_line_error(*_cli(["train", "--models", "1000000000", "--out", str(tmp_path / "t")]),
                    "memory", "fewer models")


def _tar(path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def _png(size=(8, 8), mode="L", value=0):
    buf = io.BytesIO()
    Image.new(mode, size, value).save(buf, format="PNG")
    return buf.getvalue()


def test_archive_and_image_bombs_are_refused_unread(tmp_path, monkeypatch):
    from drift_jax.data import sources

    monkeypatch.setattr(sources, "MAX_IMAGE_FILE_BYTES", 1000)  # a small cap for a small test
    bomb = tmp_path / "bomb.tar.gz"
    _tar(bomb, {"train/a/x.png": bytes(100_000), "train/b/y.png": _png()})
    assert bomb.stat().st_size < 2000  # inflates 50x and more
    with pytest.raises(DriftJaxError, match="more than the 1,000 an image file may be"):
        data.load(f"folder:{bomb}?cache=0")
    big = tmp_path / "big.tar.gz"
    _tar(big, {"train/a/x.png": _png((6000, 6000)), "train/b/y.png": _png()})
    monkeypatch.setattr(sources, "MAX_IMAGE_FILE_BYTES", 64 * 2**20)
    with pytest.raises(DriftJaxError, match="6000x6000 pixels"):
        data.load(f"folder:{big}?cache=0")


# ----------------------------------------------------------------------------- 5. our files


def _checkpoint(tmp_path):
    spec_ = ModelSpec("seedcnn", 3, (8, 8, 1))
    stack.save_stack(tmp_path / "ckpt", spec_, stack.init_stack(
        spec_, jax.random.split(jax.random.key(0), 1)))
    return tmp_path / "ckpt"


@pytest.mark.parametrize("damage, fragment", [
    (lambda t: t[: len(t) // 2], "not valid JSON"),
    (lambda t: "{}", "missing keys"),
    (lambda t: json.dumps({**json.loads(t), "extra": 1}), "unknown keys extra"),
    (lambda t: json.dumps({**json.loads(t), "spec": {**json.loads(t)["spec"], "arch": "resnet"}}),
     "cannot restore the arrays"),
    (lambda t: json.dumps({**json.loads(t), "spec": {**json.loads(t)["spec"],
                                                      "image_shape": [16, 16, 1]}}),
     r"cannot restore the arrays.*\['Dense_0'\]\['kernel'\] has shape \(1, 256, 128\), "
     r"expected \(1, 1024, 128\)"),
    (lambda t: json.dumps({**json.loads(t), "spec": {**json.loads(t)["spec"], "num_classes": 5}}),
     "cannot restore the arrays.*expected \\(1, 5\\)"),
    (lambda t: json.dumps({**json.loads(t), "num_members": 2}), "cannot restore the arrays"),
    (lambda t: json.dumps({**json.loads(t), "num_members": "two"}), "expected int"),
    (lambda t: "[1, 2]", "not an object"),
])
def test_a_damaged_checkpoint_names_its_file_and_problem(tmp_path, damage, fragment):
    ckpt = _checkpoint(tmp_path)
    meta = ckpt / "stack.json"
    meta.write_text(damage(meta.read_text()))
    with pytest.raises(DriftJaxError, match=fragment):
        stack.load_stack(ckpt)


def test_truncated_checkpoint_arrays_are_named(tmp_path):
    ckpt = _checkpoint(tmp_path)
    for path in ckpt.rglob("*"):
        if path.is_file() and path.stat().st_size > 1000:
            path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DriftJaxError, match="cannot restore the arrays"):
        stack.load_stack(ckpt)


@pytest.mark.parametrize("content", ["{}", "[]", '{"config": 1'])
def test_a_damaged_report_is_named(tmp_path, content):
    run = tmp_path / "sweep" / "runs" / "abc"
    run.mkdir(parents=True)
    (run / "report.json").write_text(content)
    rc, err = _cli(["report", str(tmp_path / "sweep")])
    _one_line_error(rc, err, "report.json", "delete its run folder")


SMALL_DETECT = ['base="synthetic?n=400&classes=4&size=8"', "controls=3", "train.epochs=2",
                "inversion.samples_per_class=2", "inversion.miface.max_iter=20",
                "permutations=50", "attack_fit_size=100", 'attacks=["rule_based"]']


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A small finished detect run, written once; tests edit copies of it."""
    from drift_jax.config import with_overrides
    from drift_jax.detect import DetectConfig, detect_drift
    from drift_jax.report import write_report

    out = tmp_path_factory.mktemp("finished") / "run"
    write_report(detect_drift(with_overrides(DetectConfig(), SMALL_DETECT), progress=False), out)
    return out


def _copy_run(finished_run, tmp_path):
    import shutil

    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def _cli_line(capsys, argv) -> str:
    """One in-process command that must fail: its one error line."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("drift-jax: error: "), err
    return err[0]


def test_a_mitigation_folder_inside_a_run_is_not_read_as_a_run(finished_run, tmp_path, capsys):
    """`detect --mitigate` writes RUN/mitigation/report.json: `report RUN` summarises the run
    and does not advise deleting it; pointed at the mitigation folder, it says what that is."""
    from drift_jax.files import atomic_write_json
    from drift_jax.mitigate import MitigationReport

    run = _copy_run(finished_run, tmp_path)
    mitigation = MitigationReport(str(run), ["class_0"], ["class_0", "class_1"], [], None,
                                  "no candidate", "labels", 0.05, {}, {}, ["class_0"], {})
    atomic_write_json(run / "mitigation" / "report.json", mitigation.to_json())
    assert cli.main(["report", str(run), "--out", str(tmp_path / "tables")]) == 0
    assert "1 run(s)" in capsys.readouterr().out
    line = _cli_line(capsys, ["report", str(run / "mitigation"), "--out",
                              str(tmp_path / "tables2")])
    assert "mitigation report" in line and "delete" not in line


@pytest.mark.parametrize("edit", [
    lambda r: r["attacks"]["rule_based"].update(p_value="low"),
    lambda r: r["attacks"]["rule_based"]["seed_rule"].update(is_drift="yes"),
    lambda r: r["baselines"]["mmd"].update(is_drift=1),
    lambda r: r["accuracy"].update(base=[0.5]),
], ids=["p-value", "seed-rule", "baseline", "accuracy"])
def test_report_names_a_run_report_edited_below_its_top_level(finished_run, tmp_path, capsys,
                                                              edit):
    run = _copy_run(finished_run, tmp_path)
    raw = json.loads((run / "report.json").read_text())
    edit(raw)
    (run / "report.json").write_text(json.dumps(raw))
    line = _cli_line(capsys, ["report", str(run), "--out", str(tmp_path / "tables")])
    assert f"run report {run / 'report.json'}" in line
    assert "does not have the layout drift_jax writes" in line or "verdict" in line
    assert not (tmp_path / "tables").exists()


@pytest.mark.parametrize("config_edit, fragment", [
    ({"controls": "many"}, "expected int"), ({"contrls": 3}, "unknown config key"),
    ({"alpha": 7.0}, "alpha must be > 0 and < 1")])
def test_mitigate_names_the_run_report_whose_config_was_edited(finished_run, tmp_path, capsys,
                                                                config_edit, fragment):
    """The error is the file's, not the command line's: it names report.json and says to run
    detect again."""
    run = _copy_run(finished_run, tmp_path)
    raw = json.loads((run / "report.json").read_text())
    raw["config"].update(config_edit)
    (run / "report.json").write_text(json.dumps(raw))
    line = _cli_line(capsys, ["mitigate", "--run", str(run), "--quiet", "--out",
                              str(tmp_path / "m")])
    assert f"run report {run / 'report.json'} holds a config" in line
    assert fragment in line and "run detect again" in line
    assert not (tmp_path / "m").exists()


def test_a_truncated_gray_file_is_named(tmp_path):
    gray = GrayData(np.zeros((1, 2, 1, 4, 4, 1), np.float32), np.arange(2), np.zeros((1, 2, 1)),
                    np.zeros((1, 3)), np.ones((1, 2, 1), np.int32))
    gray.save(tmp_path / "g.npz")
    raw = (tmp_path / "g.npz").read_bytes()
    (tmp_path / "g.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DriftJaxError, match="truncated"):
        GrayData.load(tmp_path / "g.npz")


def test_a_corrupt_cache_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("DRIFT_JAX_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "tiny.tar.gz"
    _tar(archive, {f"train/{c}/{i}.png": _png(value=40 * i) for c in "ab" for i in range(3)})
    first = data.load(f"folder:{archive}")
    (entry,) = (tmp_path / "cache" / "folder").iterdir()
    raw = (entry / "images.npy").read_bytes()
    (entry / "images.npy").write_bytes(raw[: len(raw) - 10])
    again = data.load(f"folder:{archive}")
    np.testing.assert_array_equal(again.images, first.images)
    assert len(np.load(entry / "images.npy")) == len(first)  # written afresh


def test_a_cache_variable_pointing_at_a_file_is_named(tmp_path):
    (tmp_path / "f").write_text("x")
    archive = tmp_path / "tiny.tar.gz"
    _tar(archive, {f"train/{c}/0.png": _png() for c in "ab"})
    rc, err = _cli(["data", "info", f"folder:{archive}"], env={"DRIFT_JAX_CACHE": str(
        tmp_path / "f")})
    _one_line_error(rc, err, "is a file", "DRIFT_JAX_CACHE")


# ----------------------------------------------------------------------------- 6. zero is zero


@pytest.mark.slow
def test_zero_means_zero(tmp_path):
    assert _cli([*TRAIN, "--out", str(tmp_path / "model")])[0] == 0
    ckpt = str(tmp_path / "model" / "checkpoint")
    for flag in ("--samples", "--iterations"):
        _one_line_error(*_cli(["invert", "--checkpoint", ckpt, flag, "0", "--out",
                               str(tmp_path / "inv")]), "must be >= 1")
    _one_line_error(*_cli(["sweep", "--num-tasks", "0", "--out", str(tmp_path / "sw")]),
                    "--num-tasks must be >= 1")
    _one_line_error(*_cli(["data", "info", "synthetic?noise=nan"]), "noise a finite number")
    assert not (tmp_path / "inv").exists() and not (tmp_path / "sw").exists()


# ----------------------------------------------------------------------------- 7. messages


def test_messages_name_the_real_cause(tmp_path):
    mixed = tmp_path / "mixed.tar.gz"
    _tar(mixed, {"train/a/x.png": _png(mode="L"), "train/b/y.png": _png(mode="RGB")})
    with pytest.raises(DriftJaxError, match="mix of grayscale and colour"):
        data.load(f"folder:{mixed}?cache=0")
    deep = tmp_path / "deep.tar.gz"
    _tar(deep, {"train/a/x.png": _png(mode="I;16"), "train/b/y.png": _png()})
    with pytest.raises(DriftJaxError, match="16-bit"):
        data.load(f"folder:{deep}?cache=0")
    import zipfile

    with zipfile.ZipFile(tmp_path / "data.zip", "w") as z:
        z.writestr("train/a/x.png", _png())
    with pytest.raises(DriftJaxError, match="zip archive"):
        data.load(f"folder:{tmp_path / 'data.zip'}")
    from drift_jax.config import with_overrides
    from drift_jax.detect import DetectConfig

    cfg = with_overrides(DetectConfig(), ["scenario_params.a=2", "scenario_params.b=3"])
    assert cfg.scenario_params == {"a": 2, "b": 3}
    _one_line_error(*_cli(["sweep", "--task-index", "0", "--num-tasks", "-2", "--out",
                           str(tmp_path / "s")]), "--num-tasks must be >= 1")


# ----------------------------------------------------------------------------- 8. interrupts


def test_a_ctrl_c_that_lands_in_a_gc_callback_is_not_lost():
    # Python ignores exceptions raised in gc callbacks (JAX has one): without the re-delivery
    # the interrupt below vanishes and the sleep runs its full minute.
    def interrupt(phase, info):
        if phase == "start":
            raise KeyboardInterrupt

    # Python's own Ctrl-C handler (a suite started in the background inherits SIGINT ignored)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    gc.callbacks.append(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt), cli.interrupts_not_swallowed():
            gc.collect()
            time.sleep(60)  # until the re-delivered signal interrupts it
    finally:
        gc.callbacks.remove(interrupt)
        signal.signal(signal.SIGINT, handler)


@pytest.mark.parametrize("signum, status, word", [(signal.SIGINT, 130, "interrupted"),
                                                   (signal.SIGTERM, 143, "terminated")])
@pytest.mark.slow
def test_ctrl_c_and_sigterm_print_one_line_and_write_nothing(tmp_path, signum, status, word):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "drift_jax.cli", "train", "--data", "digits",
                             "--models", "2", "--epochs", "5000", "--out", str(out)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            # a suite started in the background (`cmd &`, no job control)
                            # inherits SIGINT ignored; Ctrl-C reaches the user's foreground run
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # 5,000 epochs: the run cannot finish (and exit 0) before the signal arrives.
    deadline = time.time() + 300
    seen = ""
    # The progress bar (redrawn with carriage returns, no newline): training began.
    while "train 2x" not in seen and time.time() < deadline:
        char = proc.stderr.read(1)
        if not char:
            break
        seen += char
    assert "train 2x" in seen, seen[-2000:]
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status
    assert "Traceback" not in err and word in err
    assert not out.exists()


# ----------------------------------------------------------------------------- 9. aliasing


SMALL_DETECT_ARGS = ["--base", "synthetic?n=400&classes=4&size=8", "--quiet", "--set",
                     "controls=3", "--set", "alpha=0.25", "--set", "train.epochs=2", "--set",
                     "inversion.samples_per_class=2", "--set", "inversion.miface.max_iter=20",
                     "--set", "permutations=50", "--set", "attack_fit_size=100", "--set",
                     'attacks=["rule_based"]']


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """What commands read: a finished train run (its checkpoint), a run folder under a sweep
    folder, an image folder and an archive of one, a link to the train run, a symlink loop."""
    root = tmp_path_factory.mktemp("inputs")
    assert _cli([*TRAIN, "--out", str(root / "trained")])[0] == 0
    run = root / "sweep" / "runs" / "r"
    run.mkdir(parents=True)
    (run / "report.json").write_text("{}")
    (run / "config.json").write_text('{"base": "digits"}')
    for c in "ab":
        (root / "images" / "train" / c).mkdir(parents=True)
        (root / "images" / "train" / c / "0.png").write_bytes(_png())
    _tar(root / "images.tar.gz", {f"train/{c}/0.png": _png() for c in "ab"})
    (root / "link").symlink_to(root / "trained")
    (root / "loop").symlink_to(root / "loop")
    return root


# (id, argv with {i} for the inputs folder, what the line says)
ALIASES = [
    ("invert-out-holds-checkpoint", ["invert", "--checkpoint", "{i}/trained/checkpoint",
                                     "--out", "{i}/trained", "--overwrite"],
     "holds the --checkpoint"),
    ("invert-out-links-to-checkpoint", ["invert", "--checkpoint", "{i}/trained/checkpoint",
                                        "--out", "{i}/link", "--overwrite"],
     "holds the --checkpoint"),
    ("detect-out-holds-production-model", ["detect", "--production-model",
                                           "{i}/trained/checkpoint", "--out", "{i}/trained",
                                           "--overwrite", "--quiet"],
     "holds the production model checkpoint"),
    ("mitigate-out-is-run", ["mitigate", "--run", "{i}/sweep/runs/r", "--out", "{i}/sweep/runs/r",
                             "--overwrite"], "is the --run folder"),
    ("report-out-is-run", ["report", "{i}/sweep", "--out", "{i}/sweep/runs/r", "--overwrite"],
     "is a finished run"),
    ("report-out-holds-run", ["report", "{i}/sweep/runs/r", "--out", "{i}/sweep", "--overwrite"],
     "holds a finished run"),
    ("report-out-holds-runs", ["report", "{i}/sweep/runs", "--out", "{i}", "--overwrite"],
     "holds a finished run"),
    ("train-out-in-data", ["train", "--data", "folder:{i}/images", "--out", "{i}/images/train/c"],
     "lies inside the data of folder:"),
    ("sweep-out-in-data", ["sweep", "--set", 'base="folder:{i}/images"', "--out",
                           "{i}/images/sweep"], "lies inside the base data"),
    ("data-info-out-is-archive", ["data", "info", "folder:{i}/images.tar.gz", "--out",
                                  "{i}/images.tar.gz"], "is the data of folder:"),
    ("out-symlink-loop", ["train", "--out", "{i}/loop/run"], "symlink loop"),
]


@pytest.mark.parametrize("case, argv, fragment", ALIASES, ids=[a[0] for a in ALIASES])
def test_an_out_that_aliases_an_input_is_refused_before_any_work(case, argv, fragment, inputs,
                                                                 capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work began before --out was checked")

    for module, name in ((data, "load"), (stack, "load_stack"), (stack, "train_stack")):
        monkeypatch.setattr(module, name, no_work)
    before = _tree(inputs)
    assert cli.main([a.format(i=inputs) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("drift-jax: error: ") and fragment in err[0], err
    assert _tree(inputs) == before  # nothing read was changed, nothing was added


def _finished_run(folder):
    """A real (small) finished detect run at ``folder``."""
    from drift_jax.config import with_overrides
    from drift_jax.detect import DetectConfig, detect_drift
    from drift_jax.report import write_report

    overrides = [item for flag, item in zip(SMALL_DETECT_ARGS, SMALL_DETECT_ARGS[1:])
                 if flag == "--set"]
    cfg = with_overrides(DetectConfig(), [*overrides, 'base="synthetic?n=400&classes=4&size=8"'])
    return write_report(detect_drift(cfg, progress=False), folder)


def test_report_honours_overwrite_and_never_replaces_a_run_it_reads(tmp_path, capsys):
    run = _finished_run(tmp_path / "sweep" / "runs" / "a")
    sweep_dir, run_tree = tmp_path / "sweep", _tree(run)
    assert cli.main(["report", str(sweep_dir)]) == 0
    summary = (sweep_dir / "report" / "summary.json").read_bytes()
    capsys.readouterr()
    for argv, fragments in [
            (["report", str(sweep_dir)], ["holds a finished run", "--overwrite"]),
            (["report", str(run), "--out", str(run)], ["is a finished run"]),
            (["report", str(run), "--out", str(run), "--overwrite"], ["is a finished run"]),
            (["report", str(sweep_dir), "--out", str(run), "--overwrite"],
             ["is a finished run"])]:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and all(f in err[0] for f in fragments), (argv, err)
    assert _tree(run) == run_tree
    assert (sweep_dir / "report" / "summary.json").read_bytes() == summary
    assert cli.main(["report", str(sweep_dir), "--overwrite"]) == 0


def _finished(folder, text):
    (folder / "report.json").write_text(text)


def test_the_swap_refuses_a_run_finished_there_meanwhile(tmp_path):
    from drift_jax.files import RunExists, atomic_folder

    out = tmp_path / "run"
    with pytest.raises(RunExists, match="--overwrite"), atomic_folder(out) as late:
        _finished(late, "late")
        with atomic_folder(out) as early:  # another command, finishing first
            _finished(early, "early")
    assert (out / "report.json").read_text() == "early"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary folder left
    with atomic_folder(out, overwrite=True) as asked:
        _finished(asked, "asked")
    assert (out / "report.json").read_text() == "asked"


def test_the_exchange_puts_back_a_run_finished_between_check_and_swap(tmp_path, monkeypatch):
    """The target held a folder that was no finished run when the swap looked, and became one
    before the exchange: the exchange is undone."""
    from drift_jax import files

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")  # a killed run's leftovers: may be replaced
    looks = []

    def finished_after_the_first_look(path):
        looks.append(path)
        if len(looks) == 1:
            _finished(out, "other")  # another command finishes right after the check
            return False
        return (path / "report.json").exists()

    monkeypatch.setattr(files, "is_finished", finished_after_the_first_look)
    with pytest.raises(files.RunExists), files.atomic_folder(out) as tmp:
        _finished(tmp, "mine")
    assert (out / "report.json").read_text() == "other"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


@pytest.mark.slow
def test_two_detects_started_together_on_one_new_out_keep_the_first(tmp_path):
    out = tmp_path / "run"
    procs = [subprocess.Popen([sys.executable, "-m", "drift_jax.cli", "detect", *SMALL_DETECT_ARGS,
                               "--seed", str(seed), "--out", str(out)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for seed in (0, 1)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    winner = [rc for rc, _ in results].index(0)
    lines = results[1 - winner][1].strip().splitlines()
    assert len(lines) == 1 and "finished run" in lines[0], lines
    assert json.loads((out / "report.json").read_text())["config"]["seed"] == winner
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# The cases of sections 9 onwards in docs/BAD_INPUT.md, each pinned by a test of its section.
DOCUMENTED = ["out-aliases-input", "out-symlink-loop", "report-overwrite", "concurrent-out"]


def test_the_new_cases_are_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "BAD_INPUT.md").read_text()
    assert [c for c in DOCUMENTED if f"| `{c}` |" not in doc] == []


# ----------------------------------------------------------------------------- 10. sweeps


DOCUMENTED += ["sweep-second-grid", "sweep-leftovers"]


def test_a_second_grid_adds_to_the_sweep_listing(tmp_path, capsys):
    from drift_jax import config as config_lib
    from drift_jax import sweep
    from drift_jax.detect import DetectConfig

    out = tmp_path / "sw"
    first, second = (sweep.SweepConfig(DetectConfig(), {"seed": s}) for s in ([0, 1], [2]))
    ids = {}
    for cfg in (first, second):  # every point finished already: the sweeps only list them
        for point in sweep.points(cfg):
            ids[sweep.run_id(point)] = config_lib.to_dict(point)
            (out / "runs" / sweep.run_id(point)).mkdir(parents=True)
            _finished(out / "runs" / sweep.run_id(point), "{}")
    # the listing as sweeps wrote it before it kept several
    first_ids = {sweep.run_id(p): config_lib.to_dict(p) for p in sweep.points(first)}
    (out / "sweep.json").write_text(json.dumps({"sweep": config_lib.to_dict(first),
                                                "runs": first_ids}))
    assert cli.main(["sweep", "--grid", "seed=2", "--out", str(out), "--quiet"]) == 0
    assert cli.main(["sweep", "--grid", "seed=0,1", "--out", str(out), "--quiet"]) == 0
    listing = json.loads((out / "sweep.json").read_text())
    as_json = json.loads(json.dumps({"sweeps": [config_lib.to_dict(first),
                                                config_lib.to_dict(second)], "runs": ids}))
    assert listing == as_json and len(ids) == 3


@pytest.mark.slow
def test_a_resumed_sweep_removes_what_a_killed_one_left_unless_another_is_at_work(tmp_path):
    import fcntl

    out = tmp_path / "sw"
    argv = ["sweep", "--grid", "seed=0", *SMALL_DETECT_ARGS[2:], "--set",
            'base="synthetic?n=400&classes=4&size=8"', "--out", str(out)]
    assert _cli(argv, env={faults.FAULT_ENV: "files.folder_written"})[0] == -signal.SIGKILL
    (leftover,) = (out / "runs").glob(".*.tmp-*")
    holder = os.open(out / ".sweep.lock", os.O_RDWR)  # another sweep at work in the folder
    try:
        fcntl.lockf(holder, fcntl.LOCK_SH, 1, 1)
        assert _cli(argv)[0] == 0
        assert leftover.exists()  # it may be the other sweep's folder in progress
    finally:
        os.close(holder)
    assert _cli(argv)[0] == 0  # alone now: what a killed sweep left is removed
    assert not leftover.exists()
    assert [p.name for p in (out / "runs").iterdir() if p.name.startswith(".")] == []


# ----------------------------------------------------------------------------- 11. signals


DOCUMENTED += ["sigterm", "ctrl-c-decoder", "never-rejects"]


def test_sigterm_while_writing_exits_143_and_leaves_no_temporary_folder(tmp_path):
    rc, err = _cli([*TRAIN, "--out", str(tmp_path / "w" / "run")],
                   env={faults.FAULT_ENV: "files.folder_written:term"})
    assert rc == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "terminated (SIGTERM)" in lines[0], lines
    assert not (tmp_path / "w").exists()  # nor the hidden temporary folder, nor its parent


def _children(pid):
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids += f.read().split()
    return kids


@pytest.mark.skipif((os.cpu_count() or 1) < 2 or not os.path.exists("/proc/self/task"),
                    reason="the decoder starts worker processes on 2 or more cores (Linux /proc)")
def test_ctrl_c_while_the_folder_decoder_works_prints_one_line(tmp_path):
    for c in "ab":  # over 256 images: decoded by worker processes
        (tmp_path / "images" / "train" / c).mkdir(parents=True)
        for i in range(200):
            (tmp_path / "images" / "train" / c / f"{i}.png").write_bytes(_png(value=i))
    # its own process group, as a terminal's foreground job: Ctrl-C reaches every process
    proc = subprocess.Popen([sys.executable, "-m", "drift_jax.cli", "data", "info",
                             f"folder:{tmp_path / 'images'}?cache=0"], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 120
    while len(_children(proc.pid)) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)  # the resource tracker and two workers
    assert proc.poll() is None, "decoded before the workers could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0], err[-3000:]


@pytest.mark.parametrize("argv, alpha, warned", [
    (["--set", "controls=1"], "0.05", "controls >= 19 (or alpha >= 0.5)"),
    (["--set", "controls=3", "--set", "alpha=0.1"], "0.1", "controls >= 9 (or alpha >= 0.25)"),
    (["--set", "controls=19"], "0.05", None),
    (["--set", "controls=0"], "0.05", None),  # no calibrated test: the seed rule decides
])
def test_a_run_that_can_never_reject_warns_before_training(argv, alpha, warned, tmp_path,
                                                           capsys, monkeypatch):
    from drift_jax.detect import pipeline

    def stop(*args, **kwargs):
        raise DriftJaxError("stopped where training begins")

    monkeypatch.setattr(pipeline, "train_models", stop)
    assert cli.main(["detect", "--quiet", "--base", "synthetic?n=400&classes=4&size=8", *argv,
                     "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "drift-jax: error: stopped where training begins"
    if warned is None:
        assert len(err) == 1, err
    else:
        assert len(err) == 2 and err[0].startswith("drift-jax: warning: with ") and \
            warned in err[0] and f"alpha {alpha}," in err[0], err


def test_a_refused_run_prints_its_error_alone_without_the_warning(tmp_path, capsys):
    """The warning comes once every check has passed: a run refused by one prints one line."""
    assert cli.main(["detect", "--quiet", "--base", "synthetic?n=12&classes=4&size=8", "--set",
                     "controls=1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "too few to give split" in err[0], err


# ----------------------------------------------------------------------------- 12. a real disk


DOCUMENTED += ["orbax-full-disk"]


@pytest.fixture
def small_disk(tmp_path):
    """A 128 KiB tmpfs (root only): a checkpoint of the models below does not fit on it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(disk)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("argv, written", [
    (["train", "--data", "synthetic?n=120&classes=3&size=8", "--models", "2", "--epochs", "1",
      "--quiet"], "checkpoint"),
    pytest.param(["detect", *SMALL_DETECT_ARGS], "models", marks=pytest.mark.slow),
])
def test_a_full_disk_inside_orbax_is_one_line_naming_the_path(small_disk, argv, written):
    out = small_disk / "w" / "run"
    rc, err = _cli([*argv, "--out", str(out)])
    _one_line_error(rc, err, "no space left on device", f"{out / written}", "free some space")
    assert list(small_disk.iterdir()) == []  # nothing half-written, not even the parent
