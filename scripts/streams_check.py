"""Verdicts of the default config on digits seeds 0-9 before and after the named random streams
(`drift_jax.streams`): the stored runs of the earlier streams (benchmarks/power_m49_s16.json;
label_swap@5 in benchmarks/streams_check_digits_m49_s16_before_sev5.json, run at 2ada461)
against the records of the named streams (benchmarks/streams_check_digits_m49_s16.jsonl, written
by `scripts/bench_detection.py --variant m49_s16`). Prints per point the rejections at 0.05, the
seeds whose verdict differs and the exact McNemar p-value of the discordant pairs.

  python scripts/streams_check.py
"""

from __future__ import annotations

import json
from pathlib import Path

from scipy import stats

ROOT = Path(__file__).resolve().parents[1] / "benchmarks"
ALPHA = 0.05
DEFAULT = "rule_based:omnibus/min_rank"


def earlier() -> dict:
    out = {}
    for name in ("power_m49_s16.json", "streams_check_digits_m49_s16_before_sev5.json"):
        for key, runs in json.loads((ROOT / name).read_text())["points"].items():
            _, scenario, severity = key.split("/")
            for r in runs:
                out[f"{scenario}@{severity}", r["seed"]] = r["p_values"][DEFAULT]
    return out


def named_streams() -> dict:
    out = {}
    for line in (ROOT / "streams_check_digits_m49_s16.jsonl").read_text().splitlines():
        r = json.loads(line)
        point = r["point"]
        out[f"{point['scenario']}@{point['severity']}", point["seed"]] = r["decision"]["p_value"]
    return out


def main() -> None:
    before, after = earlier(), named_streams()
    for point in ("none@0", "label_swap@2", "label_swap@5"):
        seeds = [s for s in range(10) if (point, s) in after]
        old = [before[point, s] <= ALPHA for s in seeds]
        new = [after[point, s] <= ALPHA for s in seeds]
        only_old = [s for s, o, n in zip(seeds, old, new) if o and not n]
        only_new = [s for s, o, n in zip(seeds, old, new) if n and not o]
        discordant = len(only_old) + len(only_new)
        p = stats.binomtest(len(only_new), discordant).pvalue if discordant else 1.0
        print(f"{point}: before {sum(old)}/{len(seeds)}, after {sum(new)}/{len(seeds)}; "
              f"rejected before only: seeds {only_old}, after only: {only_new}; McNemar p {p:.3f}")


if __name__ == "__main__":
    main()
