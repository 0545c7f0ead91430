"""Probe: do the controls' shared training data break the rank test's calibration?

The rank test p = (1 + #{control <= production}) / (M + 1) is exact when the production model's
statistic is exchangeable with the M controls'. Each control trains on a random subset of the
reference pool of the production data's size (by default half the pool), so any two controls
share about half their data, while undrifted production data are disjoint from all of them. The
controls then cluster more tightly than an independent model would, and the production model
could land in their tails more often than alpha. This probe measures it under `scenario="none"`
on two arms of the same seeds:

- ``independent``: the shipped design (production data split off the pool);
- ``pooled``: `DetectConfig.control_data="pooled"`: each control draws its rows from the
  reference pool and the production data together, so under no drift the production model's
  training set is distributed like a control's (exactly exchangeable).

Writes, per arm, every rule-based statistic's and baseline's p-value per seed to
benchmarks/exchangeability_digits_pooled_controls.json (after every chunk of seeds; a killed
run resumes). benchmarks/exchangeability_digits.json holds an earlier design of the second arm
(production data drawn from the reference pool).

  python experiments/exchangeability.py --seeds 20
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from drift_jax import config as config_lib
from drift_jax import data
from drift_jax.detect import DetectConfig, detect_drift_seeds
from drift_jax.files import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("independent", "pooled")
CHUNK = 10  # seeds per stacked call


def run_arm(arm: str, seeds: list[int], cfg: DetectConfig, ds: data.Dataset) -> list[dict]:
    control_data = "pooled" if arm == "pooled" else "reference"
    reports = detect_drift_seeds(config_lib.with_overrides(cfg, [
        f'control_data="{control_data}"']), seeds, base=ds, progress=False)
    return [{"seed": seed, **r.attacks["rule_based"].statistics,
             **{f"baseline:{b}": x.p_value for b, x in r.baselines.items()}}
            for seed, r in zip(seeds, reports)]


def summarise(runs: list[dict], alpha: float = 0.05) -> dict:
    methods = [k for k in runs[0] if k != "seed"]
    p = np.array([[r[m] for m in methods] for r in runs])
    return {"seeds": len(runs), "false_positive_rate": dict(zip(methods, (p <= alpha).mean(0))),
            "all_statistics": {"p<=0.05": float((p <= 0.05).mean()),
                               "p<=0.10": float((p <= 0.10).mean()),
                               "mean_p": float(p.mean())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--out", default=str(
        ROOT / "benchmarks" / "exchangeability_digits_pooled_controls.json"))
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    # the digits power benchmark's M = 19 recipe (`scripts/bench_detection.py --variant m19`)
    cfg = config_lib.with_overrides(DetectConfig(), [
        'scenario="none"', "severity=0", "controls=19", "inversion.samples_per_class=8",
        'attacks=["rule_based"]', 'record="all"'])
    out = Path(args.out)
    runs = json.loads(out.read_text())["runs"] if out.exists() else {a: [] for a in ARMS}
    ds = data.digits()
    for arm in ARMS:
        for start in range(len(runs[arm]), args.seeds, CHUNK):
            runs[arm] += run_arm(arm, list(range(start, min(args.seeds, start + CHUNK))), cfg, ds)
            atomic_write_json(out, {"config": "digits, none, controls=19, 8 gray images, "
                                              "rule_based", "runs": runs,
                                    "summary": {a: summarise(r) for a, r in runs.items() if r}})
            print(arm, len(runs[arm]), json.dumps(summarise(runs[arm])["all_statistics"]),
                  flush=True)


if __name__ == "__main__":
    main()
