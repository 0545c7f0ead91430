"""The original work's table (docs/METHOD.md) from a reproduction sweep: per seed and mean ± sd,
base / production accuracy and each attack's member fraction on base / production gray data,
the seed rule's verdict, the calibrated p-value where there are controls, and the stage timings.

  drift-jax sweep experiments/original_cifar10.json --out runs/original_cifar10
  python experiments/reproduction_table.py runs/original_cifar10 \
      --out benchmarks/reproduction/original_cifar10.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def rows(sweep_dir: Path) -> list[dict]:
    out = []
    for path in sorted(sweep_dir.rglob("report.json")):
        r = json.loads(path.read_text())
        out.append({
            "seed": r["config"]["seed"], "scenario": r["scenario"]["name"],
            "base_acc": r["accuracy"]["base"], "prod_acc": r["accuracy"]["production"],
            **{f"{a}_base": v["base_member_fraction"] for a, v in r["attacks"].items()},
            **{f"{a}_prod": v["production_member_fraction"] for a, v in r["attacks"].items()},
            **{f"{a}_seed_rule": v["seed_rule"]["is_drift"] for a, v in r["attacks"].items()},
            **{f"{a}_p": v["p_value"] for a, v in r["attacks"].items()},
            "timings": r["timings"]})
    return sorted(out, key=lambda r: (r["scenario"], r["seed"]))


def stage_seconds(runs: list[dict]) -> dict:
    """Stage seconds of the whole sweep: the seeds of a group share every stage (one stack), so
    each group's timings count once."""
    groups = {json.dumps(r["timings"], sort_keys=True): r["timings"] for r in runs}
    total: dict[str, float] = {}
    for timings in groups.values():
        for stage, seconds in timings.items():
            if isinstance(seconds, float) and stage != "total":
                total[stage] = total.get(stage, 0.0) + seconds
    total["sum"] = sum(total.values())
    return total


def markdown(runs: list[dict]) -> str:
    attacks = sorted({k[:-5] for r in runs for k in r if k.endswith("_base") and k != "base"})
    cols = ["scenario", "seed", "base acc", "prod acc",
            *[f"{a} base / prod" for a in attacks], *[f"{a} seed rule" for a in attacks],
            *[f"{a} p" for a in attacks]]
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]

    def line(label_scenario, label_seed, subset, agg):
        cells = [label_scenario, label_seed, agg([r["base_acc"] for r in subset]),
                 agg([r["prod_acc"] for r in subset])]
        cells += [f"{agg([r[f'{a}_base'] for r in subset])} / "
                  f"{agg([r[f'{a}_prod'] for r in subset])}" for a in attacks]
        cells += [f"{sum(r[f'{a}_seed_rule'] for r in subset)}/{len(subset)}" for a in attacks]
        cells += [agg([r[f"{a}_p"] for r in subset]) if subset[0][f"{a}_p"] is not None
                  else "-" for a in attacks]
        lines.append("| " + " | ".join(cells) + " |")

    one = lambda v: f"{v[0]:.3f}"
    mean_sd = lambda v: f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}" if len(v) > 1 else one(v)
    for scenario in sorted({r["scenario"] for r in runs}):
        subset = [r for r in runs if r["scenario"] == scenario]
        for r in subset:
            line(scenario, str(r["seed"]), [r], one)
        line(scenario, "**mean ± sd**", subset, mean_sd)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, help="also write the rows and stage times as JSON")
    args = parser.parse_args()
    runs = rows(args.sweep_dir)
    if not runs:
        raise SystemExit(f"no report.json under {args.sweep_dir}")
    print(markdown(runs))
    stages = stage_seconds(runs)
    print("\nstage seconds:", ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    if args.out:
        from drift_jax.files import atomic_write_json

        atomic_write_json(args.out, {"runs": runs, "stage_seconds": stages,
                                     "table": markdown(runs)})


if __name__ == "__main__":
    main()
