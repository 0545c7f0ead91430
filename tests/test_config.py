import json

import pytest

from drift_jax import config
from drift_jax.config import TrainRunConfig
from drift_jax.errors import DriftJaxError


def test_overrides_parse_types_and_nest():
    cfg = config.with_overrides(TrainRunConfig(), [
        "models=4", "train.learning_rate=0.01", "train.execution.member_mode=vmap",
        "data=synthetic?n=100"])
    assert cfg.models == 4 and cfg.train.learning_rate == 0.01
    assert cfg.train.execution.member_mode == "vmap" and cfg.data == "synthetic?n=100"


@pytest.mark.parametrize("override, message", [
    ("train.nope=1", "unknown key 'train.nope'"),
    ("models=four", "expected int"),
    ("train.execution.member_mode=pmap", "is not one of"),
    ("train.epochs=0", "train.epochs must be >= 1"),
    ("epochs", "must look like key=value"),
])
def test_bad_overrides(override, message):
    with pytest.raises(DriftJaxError, match=message):
        config.with_overrides(TrainRunConfig(), [override])


def test_json_round_trip_and_unknown_keys(tmp_path):
    cfg = config.with_overrides(TrainRunConfig(), ["train.epochs=3"])
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config.to_dict(cfg)))
    assert config.load_json(TrainRunConfig, path) == cfg
    path.write_text(json.dumps({"modles": 3}))
    with pytest.raises(DriftJaxError, match="unknown config key"):
        config.load_json(TrainRunConfig, path)
    with pytest.raises(DriftJaxError, match="does not exist"):
        config.load_json(TrainRunConfig, tmp_path / "missing.json")
