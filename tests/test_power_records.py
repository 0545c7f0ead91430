"""Power benchmark records (scripts/power_records.py): appended, never rewritten; a torn line is
reported, never read; resuming finds the seeds done; committed files' rules come from the frozen
tables; derivation leaves every file as it was. No training."""

import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import power_records as records  # noqa: E402

FIVE = [["mean", "class_mean"], ["auc", "two_largest_deficits"],
        ["logit_mean", "largest_deficit"], ["self_confidence", "class_mean"],
        ["reverse", "two_largest_deficits"]]
FIVE_NAME = "omnibus[mean,auc,logit_mean,self_confidence,reverse]"


def make_record(seed: int, scenario: str = "relabel", severity: int = 2, models: int = 8,
                classes: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    statistics = {s: rng.uniform(0.1, 0.9, (models, classes)).round(6).tolist()
                  for s in ("fraction", "mean", "auc", "ks", "self_confidence", "reverse")}
    statistics["logit_mean"] = np.log(np.asarray(statistics["mean"])
                                      / (1 - np.asarray(statistics["mean"]))).tolist()
    return {"schema_version": records.SCHEMA_VERSION, "benchmark": "power",
            "written": records.now(), "environment": {"processor": "test", "cpu_count": 2,
                                                      "backend": "cpu"},
            "point": {"dataset": "digits", "variant": "m19", "scenario": scenario,
                      "severity": severity, "seed": seed},
            "decision": {"attack": "rule_based", "stat": "omnibus", "parts": FIVE,
                         "combination": "min_rank", "controls": models - 2, "alpha": 0.05,
                         "statistic": f"rule_based:{FIVE_NAME}/min_rank", "p_value": 0.2,
                         "drift": False},
            "definitions": {FIVE_NAME: FIVE},
            "p_values": {f"rule_based:{FIVE_NAME}/min_rank": 0.2,
                         "rule_based:mean/class_mean": 0.5, "baseline:disagreement": 1.0},
            "named": [], "changed": ["0", "1"], "seconds": 1.0,
            "class_statistics_attack": "rule_based", "class_statistics": statistics}


def fingerprint(paths) -> dict:
    return {str(p): (hashlib.sha256(Path(p).read_bytes()).hexdigest(), os.stat(p).st_mtime_ns)
            for p in paths}


def test_append_then_read_in_order(tmp_path):
    path = tmp_path / "records" / "power.jsonl"
    written = [make_record(seed) for seed in range(3)]
    for record in written:
        records.append_record(path, record)
    assert records.read_records(path) == written
    text = path.read_bytes()
    assert text.count(b"\n") == 3 and text.endswith(b"\n")
    before = text
    records.append_record(path, make_record(3))
    assert path.read_bytes().startswith(before)  # appended: nothing written is changed


def test_a_record_states_its_rule(tmp_path):
    record = make_record(0)
    del record["decision"]["parts"]
    with pytest.raises(ValueError, match="parts"):
        records.append_record(tmp_path / "r.jsonl", record)
    record = make_record(0)
    del record["point"]["seed"]
    with pytest.raises(ValueError, match="seed"):
        records.append_record(tmp_path / "r.jsonl", record)
    assert not (tmp_path / "r.jsonl").exists()


def test_torn_line_is_reported_not_read(tmp_path):
    path = tmp_path / "power.jsonl"
    for seed in range(2):
        records.append_record(path, make_record(seed))
    line = json.dumps(make_record(2)).encode()
    with open(path, "ab") as f:  # a writer killed mid-record
        f.write(line[: len(line) // 2])
    problems = []
    with pytest.warns(records.RecordWarning, match="incomplete last line"):
        read = records.read_records(path, problems)
    assert [r["point"]["seed"] for r in read] == [0, 1] and len(problems) == 1
    # even a torn line that is a whole JSON object is not read without its newline
    path2 = tmp_path / "whole.jsonl"
    records.append_record(path2, make_record(0))
    with open(path2, "ab") as f:
        f.write(json.dumps(make_record(1)).encode())
    with pytest.warns(records.RecordWarning):
        assert [r["point"]["seed"] for r in records.read_records(path2)] == [0]
    # the next append starts a line of its own; the torn line stays reported
    records.append_record(path, make_record(3))
    problems = []
    with pytest.warns(records.RecordWarning, match="not a JSON record"):
        read = records.read_records(path, problems)
    assert [r["point"]["seed"] for r in read] == [0, 1, 3] and len(problems) == 1
    # another schema is reported too
    with open(path, "ab") as f:
        f.write(b'{"schema_version": 99}\n')
    problems = []
    with pytest.warns(records.RecordWarning):
        assert len(records.read_records(path, problems)) == 3
    assert len(problems) == 2 and "schema_version 99" in problems[1]


def test_killed_writer_leaves_only_whole_records(tmp_path):
    path = tmp_path / "power.jsonl"
    big = make_record(0, models=51, classes=10)
    (tmp_path / "record.json").write_text(json.dumps(big))
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import power_records as r\n"
            "rec = json.load(open(sys.argv[2]))\n"
            "for seed in range(100000):\n"
            "    rec['point']['seed'] = seed; r.append_record(sys.argv[3], rec)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(ROOT / "scripts"),
                             str(tmp_path / "record.json"), str(path)])
    deadline = time.time() + 30
    while time.time() < deadline and (not path.exists() or path.stat().st_size < 200_000):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    problems = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", records.RecordWarning)
        read = records.read_records(path, problems)
    assert read and len(problems) <= 1
    assert [r["point"]["seed"] for r in read] == list(range(len(read)))
    assert all(r["class_statistics"] == big["class_statistics"] for r in read)


def test_resume_finds_the_seeds_done(tmp_path):
    path = tmp_path / "power.jsonl"
    assert records.seeds_done(path, make_record(0)["point"]) == set()
    for seed in (0, 1, 4):
        records.append_record(path, make_record(seed))
    records.append_record(path, make_record(2, scenario="label_swap"))
    records.append_record(path, make_record(3, severity=5))
    with open(path, "ab") as f:
        f.write(json.dumps(make_record(7)).encode()[:100])  # killed mid-record: not done
    point = {k: v for k, v in make_record(0)["point"].items() if k != "seed"}
    with pytest.warns(records.RecordWarning):
        assert records.seeds_done(path, point) == {0, 1, 4}


LEGACY = {"machine": {"processor": "AMD EPYC", "cpu_count": 2, "backend": "cpu"}, "alpha": 0.05,
          "points": {"mnist[m19_3a]/relabel/2": [
              {"seed": 0, "decided_by": "rule_based:omnibus[mean,auc]/min_rank",
               "omnibus_parts": FIVE,  # an earlier migration's stamp: not what decided it
               "p_values": {"rule_based:omnibus[mean,auc]/min_rank": 0.05,
                            "rule_based:omnibus/min_rank": 0.1,
                            "rule_based:omnibus[+self_confidence,reverse]/min_rank": 0.1,
                            "rule_based:self_confidence/class_mean": 0.3,
                            "loss:self_confidence/class_mean": 0.3,
                            "rule_based:logit_mean/class_mean": 0.9,
                            "baseline:mmd": 1.0},
               "recomputed_offline": ["rule_based:logit_mean/class_mean"]},
              {"seed": 1, "decided_by": "rule_based:omnibus[+self_confidence,reverse]/min_rank",
               "omnibus_parts": FIVE,
               "p_values": {"rule_based:omnibus[+self_confidence,reverse]/min_rank": 0.05}}],
              "digits[m19]/none/0": [
              {"seed": 0, "omnibus_parts": FIVE,
               "p_values": {"rule_based:fraction/class_mean": 0.5}}]}}


def test_legacy_rules_come_from_the_frozen_table(tmp_path, monkeypatch):
    path = tmp_path / "power_x.json"
    path.write_text(json.dumps(LEGACY))
    # reading needs no live definition: drift_jax.detect cannot even be imported here
    monkeypatch.setitem(sys.modules, "drift_jax.detect", None)
    read = {(r["point"]["dataset"], r["point"]["seed"]): r for r in records.read_legacy(path)}
    first = read["mnist", 0]
    assert first["decision"]["parts"] == [["mean", "class_mean"], ["auc", "two_largest_deficits"]]
    assert first["decision"] == {**records.LEGACY_DECISIONS[LEGACY["points"][
        "mnist[m19_3a]/relabel/2"][0]["decided_by"]], "controls": 19, "alpha": 0.05,
        "statistic": "rule_based:omnibus[mean,auc]/min_rank", "p_value": 0.05, "drift": True}
    # one statistic, one name: the two names of the five-part omnibus and the model statistic
    # stored under every attack are merged; the stamp and the offline recomputation are gone
    assert first["p_values"] == {"rule_based:omnibus[mean,auc]/min_rank": 0.05,
                                 f"rule_based:{FIVE_NAME}/min_rank": 0.1,
                                 "model:self_confidence/class_mean": 0.3, "baseline:mmd": 1.0}
    assert first["definitions"][FIVE_NAME] == FIVE
    assert "omnibus_parts" not in first and "decided_by" not in first
    assert read["mnist", 1]["decision"]["parts"] == FIVE
    assert read["mnist", 1]["decision"]["statistic"] == f"rule_based:{FIVE_NAME}/min_rank"
    assert read["digits", 0]["decision"]["stat"] == "fraction"
    assert read["digits", 0]["decision"]["controls"] == 19
    # two names of one statistic with different values are an error, not a silent choice
    broken = copy.deepcopy(LEGACY)
    broken["points"]["mnist[m19_3a]/relabel/2"][0]["p_values"][
        "rule_based:omnibus/min_rank"] = 0.5
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="one statistic"):
        records.read_legacy(path)


def test_committed_power_file_reads_with_its_own_rules():
    path = ROOT / "benchmarks" / "power.json"
    if not path.exists():
        pytest.skip("no committed power.json")
    before = fingerprint([path])
    rules = {}
    for r in records.read_legacy(path):
        rule = records.describe_rule(r["decision"])
        rules[rule] = rules.get(rule, 0) + 1
    # 90 runs decided by the two-part omnibus, 220 (before the omnibus) by the fraction
    assert rules == {"rule_based:omnibus[mean,auc]/min_rank, M = 19, alpha 0.05": 90,
                     "rule_based:fraction/class_mean, M = 19, alpha 0.05": 220}
    assert fingerprint([path]) == before


def test_omnibus_names_are_unambiguous():
    assert records.omnibus_name(tuple(map(tuple, FIVE))) == FIVE_NAME
    assert records.omnibus_name(FIVE[:2]) == "omnibus[mean,auc]"
    # parts without a short name are spelled out, so a name never stands for two statistics
    assert records.omnibus_name([["mean", "largest_deficit"], ["auc", "two_largest_deficits"]]) \
        == "omnibus[mean/largest_deficit,auc/two_largest_deficits]"


def test_derivation_does_not_modify_records(tmp_path):
    import bench_detection
    import offline_statistics

    path = tmp_path / "records" / "power.jsonl"
    for seed in range(3):
        records.append_record(path, make_record(seed))
        records.append_record(path, make_record(seed, scenario="none", severity=0))
    legacy = tmp_path / "power_x.json"
    legacy.write_text(json.dumps(LEGACY))
    before = fingerprint([path, legacy])
    stored = records.read_records(path)
    points = records.load_points([legacy, path])
    derived = points["digits[m19]/relabel/2"][0]
    assert derived["p_values"]["rule_based:omnibus[mean,auc]/min_rank"] <= 1.0
    assert "rule_based:omnibus[mean,auc]/min_rank" in derived["derived"]
    lines, figures = bench_detection.report_lines(points)
    assert any(line.startswith("| rule_based:omnibus[mean,auc]/min_rank |") for line in lines)
    assert any(line.startswith("| decision |") for line in lines)
    found = offline_statistics.derive(records.load_points([path], derive=False))
    assert "omnibus[mean,auc]" in found["digits[m19]/relabel/2"]["candidates"]
    assert fingerprint([path, legacy]) == before
    assert records.read_records(path) == stored  # the in-memory records were not changed either
