"""Ablation: the number of control models M -> calibration (false-positive rate under `none`),
power (label swap) and cost.

Control model j of a run depends only on (seed, j) (`tests/test_detect.py::
test_a_run_with_fewer_controls_is_nested_in_one_with_more`), so the first m controls of a run
with M >= m are exactly the controls of a run with m: one set of runs with the largest M gives
every smaller M without bias, for a statistic averaged over classes (the sweep sets
`stat="fraction"`; rank and deficit combinations depend on the whole control set). The shipped
sweep `ablation_controls_mnist.json` runs each M separately (for a machine with time to spare);
this script reads either that sweep's folder or `benchmarks/detection.json` and evaluates every
m <= M.

  python experiments/ablation_controls.py benchmarks/detection.json --dataset mnist
  python experiments/ablation_controls.py runs/ablation_controls_mnist
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from drift_jax.stats import calibrated_p_value

ROOT = Path(__file__).resolve().parents[1]


def records(source: Path, dataset: str | None) -> list[dict]:
    """(scenario, attack -> {production, controls}, per-model seconds) of every run found."""
    out = []
    if source.is_file():  # benchmarks/detection.json
        for key, run in json.loads(source.read_text())["runs"].items():
            name, scenario, severity, _ = key.split("/")
            if "scores" in run and (dataset is None or name == dataset):
                out.append({"scenario": scenario, "severity": int(severity),
                            "scores": run["scores"], "timings": run["timings"]})
        return out
    for path in sorted(source.rglob("report.json")):
        report = json.loads(path.read_text())
        out.append({"scenario": report["scenario"]["name"],
                    "severity": report["scenario"]["severity"],
                    "scores": {a: {"production": r["production_score"],
                                   "controls": r["control_scores"]}
                               for a, r in report["attacks"].items()},
                    "timings": report["timings"]})
    return out


def model_seconds(run: dict, num_controls: int) -> float:
    """Training + inversion seconds per model of one run (both are linear in the models)."""
    t = run["timings"]
    return (t["train"] + t["invert"]) / t.get("seeds_sharing_train_and_invert", 1) / \
        (2 + num_controls)


def table(runs: list[dict], ms: list[int], alphas: list[float]) -> list[dict]:
    rows = []
    attacks = sorted({a for r in runs for a in r["scores"]})
    per_model = np.median([model_seconds(r, len(next(iter(r["scores"].values()))["controls"]))
                           for r in runs])
    for attack in attacks:
        for m in ms:
            usable = [r for r in runs if len(r["scores"][attack]["controls"]) >= m]
            row = {"attack": attack, "M": m, "min_p": 1 / (m + 1),
                   "models_per_seed": 2 + m, "est_seconds_per_seed": per_model * (2 + m)}
            for scenario, label in (("none", "fpr"), ("label_swap", "power")):
                ps = [float(calibrated_p_value(r["scores"][attack]["controls"][:m],
                                               r["scores"][attack]["production"]))
                      for r in usable if r["scenario"] == scenario]
                row[f"{label}_runs"] = len(ps)
                for alpha in alphas:
                    row[f"{label}@{alpha}"] = float(np.mean(np.asarray(ps) <= alpha)) \
                        if ps else None
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    fmt = lambda v: "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="benchmarks/detection.json or a sweep folder")
    parser.add_argument("--dataset", help="only runs of this dataset (detection.json)")
    parser.add_argument("--m", type=int, nargs="+", default=[4, 9, 14, 19, 39])
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--out", type=Path, help="also write the table as JSON here")
    args = parser.parse_args()
    runs = records(args.source, args.dataset)
    if not runs:
        raise SystemExit(f"no runs with control scores in {args.source}")
    largest = max(len(next(iter(r["scores"].values()))["controls"]) for r in runs)
    rows = table(runs, [m for m in args.m if m <= largest], args.alpha)
    print(markdown(rows))
    if args.out:
        from drift_jax.files import atomic_write_json

        atomic_write_json(args.out, {"source": str(args.source), "rows": rows})


if __name__ == "__main__":
    main()
