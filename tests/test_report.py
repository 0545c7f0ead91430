"""report.json: typed results to JSON and back, versioned; a run folder keeps its splits."""

import json

import numpy as np
import pytest

from drift_jax import data
from drift_jax.config import with_overrides
from drift_jax.detect import DetectConfig, detect_drift
from drift_jax.errors import DriftJaxError
from drift_jax.report import (
    SCHEMA_VERSION,
    read_run_report,
    report_to_json,
    write_report,
)

SMALL = ['base="synthetic?n=400&classes=4&size=8"', "controls=3", "train.epochs=2",
         "inversion.samples_per_class=2", "inversion.miface.max_iter=20", "permutations=50",
         "attack_fit_size=100", 'attacks=["rule_based"]', 'scenario="relabel"']


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    report = detect_drift(with_overrides(DetectConfig(), SMALL), progress=False)
    out = tmp_path_factory.mktemp("report") / "run"
    write_report(report, out)
    return report, out


def test_a_run_reads_back_as_the_report_it_wrote(run):
    report, out = run
    raw = json.loads((out / "report.json").read_text())
    assert raw["schema_version"] == SCHEMA_VERSION
    assert raw["drift_jax"]["version"] and "commit" in raw["drift_jax"]
    again = read_run_report(out, "fix")
    assert json.dumps(report_to_json(again)) == json.dumps(raw)
    # the splits the run trained on, each control's rows among them
    assert set(again.splits) == {"base", "production", "reference", "holdout", "controls"}
    for name, rows in report.splits.items():
        np.testing.assert_array_equal(again.splits[name], rows)
    assert again.splits["controls"].shape == (3, len(report.splits["production"]))
    assert np.isin(again.splits["controls"], again.splits["reference"]).all()


def test_an_unversioned_report_migrates_and_a_newer_one_is_refused(run, tmp_path):
    _, out = run
    raw = json.loads((out / "report.json").read_text())
    old = {k: v for k, v in raw.items() if k not in ("schema_version", "drift_jax")}
    old.pop("localisation")  # the oldest runs had none
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.json").write_text(json.dumps(old))
    migrated = read_run_report(tmp_path / "old", "fix")
    assert migrated.p_value == raw["p_value"] and migrated.localisation.partners == {}
    assert migrated.splits is None  # older runs stored none
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "report.json").write_text(json.dumps({**raw, "schema_version": 99}))
    with pytest.raises(DriftJaxError, match="schema_version 99.*versions 1 to"):
        read_run_report(tmp_path / "new", "fix")
    nested = {**raw, "attacks": {"rule_based": {"p_value": 0.5}}}  # drift below the top level
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "report.json").write_text(json.dumps(nested))
    with pytest.raises(DriftJaxError, match="does not have the layout drift_jax writes"):
        read_run_report(tmp_path / "nested", "fix")


def test_settings_that_would_be_ignored_are_refused_and_mean_init_runs():
    with pytest.raises(DriftJaxError, match="combine='class_mean' has no effect"):
        DetectConfig(combine="class_mean")
    ds = data.synthetic(n=400, classes=4, size=8)
    report = detect_drift(with_overrides(DetectConfig(), [*SMALL, 'inversion.miface.init="mean"']),
                          base=ds, progress=False)
    assert report.gray.images.shape[:3] == (5, 4, 2) and np.isfinite(report.gray.images).all()
