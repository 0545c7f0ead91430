import json

import jax
import numpy as np
import pytest

from drift_jax import cli, data, stack
from drift_jax.config import TrainConfig
from drift_jax.detect import DetectConfig, detect_drift
from drift_jax.errors import DriftJaxError
from drift_jax.models import ModelSpec


@pytest.mark.parametrize("scenario, drift", [("label_swap", True), ("none", False)])
def test_digits_default_pipeline_flags_a_swap_and_not_none(scenario, drift):
    report = detect_drift(DetectConfig(scenario=scenario), progress=False)
    assert report.is_drift is drift
    if drift:
        assert set(report.drifted_classes) == {"0", "1"}  # the swapped classes, no others
    else:
        assert report.drifted_classes == [] and report.p_value > 0.05
    assert report.timings["total"] < 120
    assert report.accuracy["base"] > 0.9


SMALL = ["controls=3", "train.epochs=2", "inversion.samples_per_class=2",
         "inversion.miface.max_iter=20", "permutations=50", "attack_fit_size=100",
         'attacks=["rule_based"]']


def test_cli_detect_writes_a_readable_run(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["detect", "--base", "synthetic?n=400&classes=4&size=8", "--scenario", "relabel",
            "--out", str(out), "--quiet"]
    for item in SMALL:
        args += ["--set", item]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "verdict:" in printed and "scenario relabel" in printed
    report = json.loads((out / "report.json").read_text())
    assert set(report["attacks"]) == {"rule_based"} and len(report["attacks"]["rule_based"][
        "control_scores"]) == 3
    assert {"disagreement", "bbsd", "mmd"} == set(report["baselines"])
    assert (out / "summary.md").exists() and (out / "gray.npz").exists()
    assert {p.name for p in (out / "figures").iterdir()} == {
        "gray_base_vs_production.png", "scores_rule_based.png", "null_rule_based.png"}


def test_production_model_needs_no_production_data(tmp_path):
    ds = data.synthetic(n=400, classes=4, size=8)
    spec = ModelSpec("seedcnn", 4, ds.image_shape)
    v = stack.init_stack(spec, jax.random.split(jax.random.key(5), 1))
    prod = stack.train_stack(spec, v, ds.images, ds.labels, [np.arange(200)],
                             TrainConfig(epochs=2), jax.random.key(6), progress=False).variables
    stack.save_stack(tmp_path / "prod", spec, prod)
    from drift_jax.config import with_overrides

    cfg = with_overrides(DetectConfig(), ["base=\"synthetic?n=400&classes=4&size=8\"",
                                          f"production_model=\"{tmp_path / 'prod'}\"",
                                          'scenario="none"', *SMALL])
    report = detect_drift(cfg, base=ds, progress=False)
    assert set(report.baselines) == {"disagreement"}  # BBSD and MMD need production data
    assert 0 < report.p_value <= 1


def test_bad_detect_configs():
    with pytest.raises(DriftJaxError, match="include the primary attack"):
        DetectConfig(attacks=("black_box",))
    with pytest.raises(DriftJaxError, match="not both"):
        DetectConfig(production="digits", production_model="x")
    with pytest.raises(DriftJaxError, match="leave no held-out data"):
        detect_drift(DetectConfig(base_fraction=0.5, production_fraction=0.3,
                                  reference_fraction=0.3), progress=False)
