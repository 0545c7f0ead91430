"""Candidate decision statistics evaluated offline from stored power runs: no model is retrained
and nothing stored is changed. Each run of `scripts/bench_detection.py` records every model's
per-class statistics (``class_statistics``: base, production, controls x classes) and, with
--confusion, the base model's mean class probabilities on every model's gray data
(``confusion``: models x C x C); a candidate combines them into one score per model, and the
production model's rank among the controls is its exact p-value (every model is combined alike).
The candidates are `power_records.candidate_scores`'s: every omnibus of
`power_records.OMNIBUS_NAMES` (written out there) and of the runs' own definitions, and
statistics of the confusion.

Reads records files (benchmarks/records/*.jsonl) and the power files committed before records
(benchmarks/power*.json, as `power_records.read_legacy` reads them); prints, and with --out
writes what it derived to a new JSON file (never into the files it read).

  python scripts/offline_statistics.py benchmarks/power_mnist.json   # power per candidate
  python scripts/offline_statistics.py benchmarks/records/power.jsonl --out derived.json
  python scripts/offline_statistics.py --localisation benchmarks/power_mnist.json  # flagging
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import power_records as records  # noqa: E402
from power_records import LOCALISATION_RULES, SCENARIOS  # noqa: E402

ALPHA = 0.05


def detected(record: dict, gate: str = "decision") -> bool:
    """Whether ``gate`` detected drift in ``record``: its own decision (its rule and alpha), or
    a statistic's p-value at `ALPHA` (derived from the per-class statistics where not stored)."""
    if gate == "decision":
        return bool(record["decision"]["drift"])
    return records.with_derived(record)["p_values"].get(gate, 1.0) <= ALPHA


def localisation(runs: list[dict], changed: set[int] | None,
                 gate: str = "decision") -> dict[str, str]:
    """Per rule of `LOCALISATION_RULES`, flagging alone (the partner tests need the per-image
    answers, which runs do not store). With ``changed`` classes: in the runs ``gate`` detected
    (`detected`; gated, as `detect` is), how often the flagged classes hold both changed classes,
    are exactly them, and how many others they hold. Without (``none``): the rate of undrifted
    models with some class flagged, each control in turn taken as the production model
    (ungated)."""
    out = {}
    for rule, names in LOCALISATION_RULES.items():
        if changed is None:
            found = [bool(records.flagged(r, names, m)) for r in runs
                     for m in range(2, len(r["class_statistics"]["mean"]))]
            out[rule] = f"undrifted models with a class flagged {np.mean(found):.3f} " \
                        f"({sum(found)} of {len(found)})"
            continue
        found = [records.flagged(r, names) for r in runs if detected(r, gate)]
        out[rule] = (f"detected {len(found)}: both changed classes flagged in "
                     f"{sum(changed <= f for f in found)}, exactly in "
                     f"{sum(changed == f for f in found)}; "
                     f"{sum(len(f - changed) for f in found)} other classes")
    return out


def derive(points: dict[str, list[dict]], with_localisation: bool = False,
           gate: str = "decision") -> dict:
    """{point key: {"seeds", "decided_by", "disagreement", "candidates": {name: {"power",
    "p_values"}}, "localisation"?}} for every point whose runs stored per-class statistics."""
    out = {}
    for key, runs in points.items():
        runs = [r for r in runs if r.get("class_statistics")]
        if not runs:
            continue
        found = [records.candidate_p_values(r) for r in runs]
        names = list(dict.fromkeys(name for f in found for name in f))
        entry = {"seeds": [r["point"]["seed"] for r in runs],
                 "decided_by": sorted({records.describe_rule(r["decision"]) for r in runs}),
                 "disagreement": float(np.mean([r["p_values"].get("baseline:disagreement", 1.0)
                                                <= ALPHA for r in runs])),
                 "candidates": {}}
        for name in names:
            ps = [f[name] for f in found if name in f]
            entry["candidates"][name] = {"power": float(np.mean(np.array(ps) <= ALPHA)),
                                         "p_values": ps}
        if with_localisation:
            scenario = key.split("/")[1]
            changed = None if scenario == "none" else SCENARIOS.get(scenario, (0, 0, None))[2]
            if scenario == "none" or changed:
                entry["localisation"] = localisation(runs, changed, gate)
        out[key] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+",
                        help="records files (.jsonl) or committed power files (.json)")
    parser.add_argument("--localisation", action="store_true",
                        help="the classes each localisation rule flags (`localisation`)")
    parser.add_argument("--gate", default="decision",
                        help="--localisation counts the runs this detected: each run's own "
                             "decision (default) or a statistic, e.g. "
                             "'rule_based:omnibus[mean,auc,logit_mean]/min_rank'")
    parser.add_argument("--out", help="also write what was derived to this new JSON file")
    args = parser.parse_args()
    inputs = [Path(f).resolve() for f in args.files]
    if args.out:
        out = Path(args.out).resolve()
        if out in inputs or out.suffix == ".jsonl" or out.is_relative_to(
                records.RECORDS_DIR.resolve()) or out.name in records.LEGACY_FILES:
            raise SystemExit(f"--out {args.out}: derived statistics go to a file of their own, "
                             "not into records or benchmark files")
    derived = {}
    for path in args.files:
        points = records.load_points([path], derive=False)
        derived[path] = found = derive(points, args.localisation, args.gate)
        for key, entry in found.items():
            print(f"{key} ({len(entry['seeds'])} seeds; disagreement "
                  f"{entry['disagreement']:.1f})")
            if args.localisation:
                for rule, line in entry.get("localisation", {}).items():
                    print(f"  flagged by {rule:36s} {line}")
                continue
            for name, c in entry["candidates"].items():
                print(f"  {name:56s} {c['power']:.1f}  "
                      f"p = {', '.join(f'{p:.2f}' for p in c['p_values'])}")
    if args.out:
        from drift_jax.files import atomic_write_json

        sources = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in args.files}
        atomic_write_json(args.out, {"derived_from": sources, "alpha": ALPHA,
                                     "gate": args.gate, "files": derived})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
