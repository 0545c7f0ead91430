"""A first look at `DetectConfig.stat` on digits (issue 13; not yet the power curves): the label
swap at severity 2 and `none`, seeds 0-4 stacked, the rule-based attack, each statistic.

  python scripts/probe_stats.py      # ~5 minutes on 2 CPU cores; one line per row, then JSON
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drift_jax import data  # noqa: E402
from drift_jax.config import with_overrides  # noqa: E402
from drift_jax.detect import DetectConfig, TrainedCache, detect_drift_seeds  # noqa: E402


def main() -> None:
    digits, cache, seeds, out = data.load("digits"), TrainedCache(), list(range(5)), {}
    for scenario, severity in (("label_swap", 2), ("none", 0)):
        for stat in ("fraction", "mean", "auc", "ks"):
            cfg = with_overrides(DetectConfig(), [
                f'scenario="{scenario}"', f"severity={severity}", f'stat="{stat}"',
                'attacks=["rule_based"]'])
            start = time.perf_counter()
            reports = detect_drift_seeds(cfg, seeds, base=digits, progress=False, cache=cache)
            row = {"rate": sum(r.is_drift for r in reports) / len(reports),
                   "p_values": [r.p_value for r in reports],
                   "seconds": round(time.perf_counter() - start, 1)}
            out[f"{scenario}@{severity}/{stat}"] = row
            print(scenario, severity, stat, row, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
