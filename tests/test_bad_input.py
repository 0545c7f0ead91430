"""The bad-input catalogue (docs/BAD_INPUT.md): every case through the CLI exits 2 with one line
naming the problem and the fix, no traceback, and no output folder left behind; the API cases
raise `DriftJaxError` with the same kind of message."""

import gzip
import io
import re
import tarfile
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from drift_jax import cli, data, inversion, membership, stack
from drift_jax.config import TrainConfig
from drift_jax.errors import DriftJaxError
from drift_jax.models import ModelSpec

DOC = Path(__file__).resolve().parents[1] / "docs" / "BAD_INPUT.md"
TINY = ["--set", "train.epochs=1", "--set", "controls=1", "--set", "alpha=0.5"]


def _png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Broken inputs on disk, made once."""
    root = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    # A truncated IDX file.
    (root / "idx").mkdir()
    header = np.array([0x803, 10, 28, 28], ">i4").tobytes()
    (root / "idx" / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + b"\0" * 99))
    labels = np.array([0x801, 10], ">i4").tobytes() + bytes(range(10))
    (root / "idx" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    # An image folder with a corrupt JPEG, and one with a single class.
    for name, classes in (("corrupt", ("a", "b")), ("oneclass", ("a",))):
        for c in classes:
            d = root / name / "train" / c
            d.mkdir(parents=True)
            for i in range(3):
                (d / f"{i}.png").write_bytes(_png(rng.integers(0, 256, (8, 8, 3), np.uint8)))
    (root / "corrupt" / "train" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut")
    # Archives whose members escape the folder: absolute, '..', symlink.
    payload = _png(np.zeros((8, 8, 3), np.uint8))
    for name, member, kind in (("abs", "/etc/train/a/0.png", tarfile.REGTYPE),
                               ("dotdot", "../x/train/a/0.png", tarfile.REGTYPE),
                               ("link", "root/train/a/0.png", tarfile.SYMTYPE)):
        with tarfile.open(root / f"{name}.tar.gz", "w:gz") as tar:
            info = tarfile.TarInfo(member)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    (root / "not-a-tar.tar.gz").write_bytes(b"this is no archive")
    # Configs.
    (root / "broken.json").write_text('{"controls": 3,')
    (root / "unknown.json").write_text('{"contrls": 3}')
    (root / "wrongtype.json").write_text('{"controls": "many"}')
    # A ResNet checkpoint for 10 classes of 8x8x1 (digits' shape), and an empty folder.
    spec = ModelSpec("resnet", 10, (8, 8, 1))
    stack.save_stack(root / "resnet", spec, stack.init_stack(
        spec, jax.random.split(jax.random.key(0), 1)))
    (root / "empty").mkdir()
    # A stack of two SeedCNNs of digits' shape: not a production model (that is one model).
    spec = ModelSpec("seedcnn", 10, (8, 8, 1))
    stack.save_stack(root / "seedcnn2", spec, stack.init_stack(
        spec, jax.random.split(jax.random.key(0), 2)))
    # IDX files that hold no images.
    (root / "idx0").mkdir()
    header = np.array([0x803, 0, 28, 28], ">i4").tobytes()
    (root / "idx0" / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(header))
    empty_labels = np.array([0x801, 0], ">i4").tobytes()
    (root / "idx0" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(empty_labels))
    (root / "repeated.json").write_text('{"controls": 3, "controls": 5}')
    (root / "sweep.json").write_text('{"grid": {"seed": [0, 1]}}')
    return root


# (id, argv, message): argv may use {d} for the fixture folder and {out} for the output folder.
CLI_CASES = [
    ("missing-path", ["data", "info", "idx:{d}/nowhere"], "does not exist"),
    ("unknown-source", ["data", "info", "imagenet"], "unknown data spec"),
    ("unknown-spec-option", ["data", "info", "synthetic?colour=1"], "unknown option 'colour'"),
    ("bad-spec-value", ["data", "info", "synthetic?n=many"], "not a valid int"),
    ("truncated-idx", ["data", "info", "idx:{d}/idx"], "truncated or corrupt"),
    ("corrupt-jpeg", ["data", "info", "folder:{d}/corrupt"], "broken.jpg"),
    ("archive-absolute", ["data", "info", "folder:{d}/abs.tar.gz"], "escapes its folder"),
    ("archive-dotdot", ["data", "info", "folder:{d}/dotdot.tar.gz"], "escapes its folder"),
    ("archive-link", ["data", "info", "folder:{d}/link.tar.gz"], "link"),
    ("archive-corrupt", ["data", "info", "folder:{d}/not-a-tar.tar.gz"], "cannot read archive"),
    ("empty-split", ["data", "info", "folder:{d}/corrupt?split=test"], "no images for split"),
    ("one-class", ["detect", "--base", "folder:{d}/oneclass", "--out", "{out}"],
     "need at least 2 class names"),
    ("class-too-small", ["detect", "--base", "synthetic?n=12&classes=4&size=8", "--out", "{out}"],
     "too few to give split"),
    ("unknown-config-key", ["detect", "--set", "contrls=3", "--out", "{out}"],
     "unknown key 'contrls'"),
    ("wrong-config-type", ["train", "--set", "train.epochs=\"three\"", "--out", "{out}"],
     "expected int"),
    ("bad-enum", ["train", "--set", "train.execution.member_mode=fast", "--out", "{out}"],
     "is not one of"),
    ("bad-override-form", ["detect", "--set", "controls", "--out", "{out}"], "key=value"),
    ("config-missing", ["detect", "--config", "{d}/none.json", "--out", "{out}"],
     "does not exist"),
    ("config-invalid-json", ["detect", "--config", "{d}/broken.json", "--out", "{out}"],
     "not valid JSON"),
    ("config-file-unknown-key", ["detect", "--config", "{d}/unknown.json", "--out", "{out}"],
     "unknown config key"),
    ("config-file-wrong-type", ["detect", "--config", "{d}/wrongtype.json", "--out", "{out}"],
     "expected int"),
    ("zero-epochs", ["train", "--epochs", "0", "--out", "{out}"], "must be >= 1"),
    ("unknown-scenario", ["detect", "--scenario", "earthquake", *TINY, "--out", "{out}"],
     "unknown drift scenario"),
    ("severity-range", ["detect", "--severity", "9", *TINY, "--out", "{out}"],
     "severity must be >= 0 and <= 5"),
    ("unknown-attack", ["detect", "--set", 'attacks=["oracle"]', "--out", "{out}"],
     "attacks must come from"),
    ("alpha-range", ["detect", "--set", "alpha=5", "--out", "{out}"], "alpha must be > 0 and < 1"),
    ("no-holdout", ["detect", "--set", "reference_fraction=0.6", "--out", "{out}"],
     "leave no held-out data"),
    ("controls-cannot-be-fed", ["detect", "--set", "reference_fraction=0.1", *TINY,
                                "--out", "{out}"], "reference pool has"),
    ("not-a-checkpoint", ["invert", "--checkpoint", "{d}/empty", "--out", "{out}"],
     "not a drift_jax checkpoint"),
    ("checkpoint-other-arch", ["detect", "--production-model", "{d}/resnet", *TINY,
                               "--out", "{out}"], "holds resnet"),
    ("invert-classes", ["invert", "--checkpoint", "{d}/resnet", "--classes", "3,x",
                        "--out", "{out}"], "--classes must be"),
    ("invert-class-range", ["invert", "--checkpoint", "{d}/resnet", "--classes", "12",
                            "--out", "{out}"], "classes must lie in 0..9"),
    ("sweep-grid-form", ["sweep", "--grid", "seed", "--out", "{out}"], "key=v1,v2"),
    ("sweep-task-range", ["sweep", "--task-index", "3", "--num-tasks", "2", "--out", "{out}"],
     "outside 0..1"),
    ("report-empty", ["report", "{d}/empty"], "no finished runs"),
    # Every given value is used or refused.
    ("spec-repeated-option", ["data", "info", "synthetic?n=100&n=200"],
     "option n is given twice"),
    ("spec-boolean", ["data", "info", "idx:{d}/idx?transpose=maybe"], "is not a boolean"),
    ("mitigate-empty-strategies", ["mitigate", "--run", "{d}/empty", "--strategies", "",
                                   "--out", "{out}"], "--strategies '' has an empty name"),
    ("mitigate-empty-classes", ["mitigate", "--run", "{d}/empty", "--classes", "",
                                "--out", "{out}"], "--classes '' has an empty name"),
    ("sweep-grid-repeated", ["sweep", "--grid", "seed=0,1", "--grid", "seed=2", "--out",
                             "{out}"], "one --grid per key"),
    ("sweep-grid-value", ["sweep", "--grid", "seed=1,two", "--out", "{out}"],
     "expected int, got 'two'"),
    ("sweep-set-and-grid", ["sweep", "--set", "seed=3", "--grid", "seed=0,1", "--out", "{out}"],
     "both set by --set and swept by the grid"),
    ("sweep-file-and-grid", ["sweep", "{d}/sweep.json", "--grid", "seed=2", "--out", "{out}"],
     "swept both by the sweep file's grid and by --grid"),
    ("mitigate-empty-class-list", ["mitigate", "--run", "{d}/empty", "--set", "classes=[]",
                                   "--out", "{out}"], "classes is an empty list"),
    ("flag-and-set", ["train", "--seed", "1", "--set", "seed=2", "--out", "{out}"],
     "seed is given more than once"),
    ("config-repeated-key", ["detect", "--config", "{d}/repeated.json", "--out", "{out}"],
     "gives the key 'controls' more than once"),
    ("production-model-scenario", ["detect", "--production-model", "{d}/seedcnn2", "--scenario",
                                   "label_swap", "--out", "{out}"], "would not be applied"),
    ("production-model-stack", ["detect", "--production-model", "{d}/seedcnn2", *TINY,
                                "--out", "{out}"], "is a stack of 2 models"),
    ("swap-with-itself", ["detect", "--set", "scenario_params.a=1", "--set",
                          "scenario_params.b=1", *TINY, "--out", "{out}"],
     "swapping a class with itself changes nothing"),
    # One line for every failure a user can cause.
    ("idx-no-images", ["data", "info", "idx:{d}/idx0"], "holds no images"),
    ("per-class", ["data", "info", "digits", "--per-class", "0", "--out", "{out}"],
     "--per-class must be >= 1"),
    ("image-too-small", ["train", "--data", "synthetic?n=120&classes=3&size=3", "--out", "{out}"],
     "seedcnn needs images of at least 4x4 pixels"),
    ("argparse", ["train", "--epochs", "three", "--out", "{out}"],
     "argument --epochs: invalid int value: 'three'"),
    ("argparse-missing", ["mitigate", "--out", "{out}"], "required: --run"),
]


@pytest.mark.parametrize("case, argv, message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_exits_2_with_one_line_and_no_output(case, argv, message, files,
                                                           tmp_path, capsys):
    out = tmp_path / "out"
    argv = [a.format(d=files, out=out) for a in argv]
    assert cli.main(argv + (["--quiet"] if argv[0] in ("detect", "invert", "sweep") else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("drift-jax: error: "), err
    assert message in err[0]
    assert not out.exists()  # nothing half written


def test_help_still_prints_the_usage(capsys):
    assert cli.main(["detect", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: drift-jax detect")


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("drift-jax: error: "), err
    return err[0]


@pytest.mark.parametrize("env, message", [
    ({"SLURM_ARRAY_TASK_ID": "three", "SLURM_ARRAY_TASK_COUNT": "4"},
     "SLURM_ARRAY_TASK_ID='three' is not an integer"),
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": ""},
     "SLURM_ARRAY_TASK_COUNT='' is not an integer"),
    ({"SLURM_ARRAY_TASK_ID": "1"}, "neither SLURM_ARRAY_TASK_COUNT nor SLURM_ARRAY_TASK_MAX"),
    ({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "3"},
     "give task index 9 of 4 task(s)"),
], ids=["malformed", "empty", "incomplete", "inconsistent"])
def test_slurm_array_variables_that_are_malformed_or_incomplete_are_named(
        env, message, monkeypatch, tmp_path, capsys):
    from drift_jax import sweep

    for name in sweep.SLURM_ARRAY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["sweep", "--quiet", "--out", str(tmp_path / "sweep")]) == 2
    assert message in _one_line(capsys)
    assert not (tmp_path / "sweep").exists()


SLURM_STEP = {"SLURM_JOB_ID": "12", "SLURM_STEP_NODELIST": "node[01-02]", "SLURM_NTASKS": "2",
              "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}


@pytest.mark.parametrize("change, message", [
    ({"SLURM_STEP_NODELIST": None}, "SLURM_STEP_NODELIST is not set"),
    ({"SLURM_NTASKS": "two"}, "SLURM_NTASKS='two' is not an integer"),
    ({"SLURM_STEP_NODELIST": " "}, "SLURM_STEP_NODELIST is empty"),
    ({"SLURM_PROCID": "2"}, "SLURM_PROCID=2 is not a task of SLURM_NTASKS=2"),
], ids=["incomplete", "malformed", "empty", "inconsistent"])
def test_slurm_job_variables_are_checked_before_jax_reads_them(change, message, monkeypatch):
    from drift_jax import devices

    monkeypatch.setattr(jax.distributed, "initialize",
                        lambda *a, **k: pytest.fail("reached jax.distributed.initialize"))
    for name, value in {**SLURM_STEP, **change}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(DriftJaxError, match=re.escape(message)):
        devices.initialize_distributed()


def _spec():
    return ModelSpec("seedcnn", 10, (8, 8, 1))


def _vars(n=1):
    return stack.init_stack(_spec(), jax.random.split(jax.random.key(0), n))


def _rule_based():
    context = membership.AttackContext(_spec(), _vars(), DIGITS.images, DIGITS.labels,
                                       np.arange(10), np.arange(10, 20), jax.random.key(0))
    return membership.RuleBased().fit(context)


DIGITS = data.digits()
API_CASES = [
    ("images-rank", lambda: data.Dataset(np.zeros((4, 8, 8), np.uint8), np.zeros(4, int),
                                         ("a", "b")), "must have rank 4"),
    ("images-dtype", lambda: data.Dataset(np.zeros((4, 8, 8, 1), np.float32),
                                          np.zeros(4, int), ("a", "b")), "uint8"),
    ("images-range-nan", lambda: data.from_float_images(
        np.full((4, 8, 8, 1), np.nan), np.zeros(4, int), ("a", "b")), "NaN or Inf"),
    ("images-range-float", lambda: data.from_float_images(
        np.full((4, 8, 8, 1), 3.0), np.zeros(4, int), ("a", "b")), "[0, 1]"),
    ("labels-range", lambda: data.Dataset(np.zeros((4, 8, 8, 1), np.uint8),
                                          np.array([0, 1, 2, 5]), ("a", "b")), "labels"),
    ("labels-length", lambda: data.Dataset(np.zeros((4, 8, 8, 1), np.uint8), np.zeros(3, int),
                                           ("a", "b")), "labels"),
    ("train-channels", lambda: stack.train_stack(
        _spec(), _vars(), np.zeros((20, 8, 8, 3), np.uint8), np.zeros(20, int),
        [np.arange(20)], TrainConfig(epochs=1), jax.random.key(0), progress=False),
     "the model expects"),
    ("train-index-count", lambda: stack.train_stack(
        _spec(), _vars(2), DIGITS.images, DIGITS.labels, [np.arange(20)],
        TrainConfig(epochs=1), jax.random.key(0), progress=False), "1 index arrays"),
    ("train-empty-member", lambda: stack.train_stack(
        _spec(), _vars(), DIGITS.images, DIGITS.labels, [np.arange(0)],
        TrainConfig(epochs=1), jax.random.key(0), progress=False), "no training examples"),
    ("train-keys", lambda: stack.train_stack(
        _spec(), _vars(2), DIGITS.images, DIGITS.labels, [np.arange(9)] * 2,
        TrainConfig(epochs=1), jax.random.split(jax.random.key(0), 3), progress=False),
     "3 keys for a stack of 2"),
    ("score-shape", lambda: _rule_based().score(
        np.zeros((2, 9, 9, 1), np.float32), np.zeros(2, int)), "images must have shape"),
    ("score-nan", lambda: _rule_based().score(
        np.full((2, 8, 8, 1), np.nan, np.float32), np.zeros(2, int)), "NaN or Inf"),
    ("score-labels", lambda: _rule_based().score(
        np.zeros((2, 8, 8, 1), np.float32), np.array([0, 10])), "labels must lie in 0..9"),
    ("invert-no-classes", lambda: inversion.invert(
        _spec(), _vars(), [], inversion.InversionConfig(), jax.random.key(0), progress=False),
     "no classes"),
]


@pytest.mark.parametrize("case, call, message", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input_raises_a_clear_error(case, call, message):
    with pytest.raises(DriftJaxError, match=re.escape(message)):
        call()


def test_divergence_names_the_member_and_the_steps():
    ds = DIGITS
    with pytest.raises(DriftJaxError, match=r"member 0 has a non-finite loss in epoch 0, steps"):
        stack.train_stack(_spec(), _vars(), ds.images, ds.labels, [np.arange(500)],
                          TrainConfig(epochs=1, learning_rate=1e38), jax.random.key(0),
                          progress=False)
    poisoned = jax.tree.map(lambda x: x.at[1].set(np.nan), _vars(2))
    cfg = inversion.InversionConfig(samples_per_class=1,
                                    miface=inversion.MIFaceConfig(max_iter=5, init="grey"))
    with pytest.raises(DriftJaxError, match=r"model 1, class 0 went non-finite in iterations "
                                            r"0\.\.4.*No scores"):
        inversion.invert(_spec(), poisoned, [0, 1], cfg, jax.random.key(0), progress=False)


# Cases tested by their own functions above (environment variables, not arguments).
OTHER_CASES = ["slurm-array", "slurm-job", "help"]


def test_the_catalogue_is_documented_and_large_enough():
    cases = [c[0] for c in CLI_CASES + API_CASES] + OTHER_CASES
    assert len(cases) >= 25 and len(set(cases)) == len(cases)
    doc = DOC.read_text()
    missing = [c for c in cases if f"`{c}`" not in doc]
    assert not missing, f"add these cases to {DOC.name}: {missing}"


def test_no_pickle_in_anything_a_user_loads():
    """No pickle module, no np.load(allow_pickle=True), no torch.load in the package."""
    package = Path(__file__).resolve().parents[1] / "drift_jax"
    offenders = []
    for path in package.rglob("*.py"):
        text = path.read_text()
        for pattern in (r"\bimport pickle\b", r"\bpickle\.(load|dump|Unpickler)",
                        r"allow_pickle\s*=\s*True", r"\bcloudpickle\b", r"\bdill\b",
                        r"torch\.load\("):
            if re.search(pattern, text):
                offenders.append(f"{path.name}: {pattern}")
    assert not offenders
    # And the loaders themselves refuse pickled payloads.
    assert "allow_pickle=False" in (package / "inversion.py").read_text()
