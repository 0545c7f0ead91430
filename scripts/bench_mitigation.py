"""Mitigation benchmark: per case and seed, `detect` then `mitigate` in one process,
side by side, and an oracle trained from scratch on production-distribution data of the base +
production size (the scenario applied to the base split too). Per run: each candidate's
production-distribution accuracy, the share of the base -> oracle gap it recovers, forgetting on
the unchanged classes, the re-test, and the cost of mitigation relative to detection. Writes
benchmarks/mitigation.json after every run (a killed benchmark resumes), the mitigation section
of BENCHMARKS.md and docs/figures/mitigation.png.

  python scripts/bench_mitigation.py                       # digits cases, 5 seeds
  python scripts/bench_mitigation.py --cases mnist cifar10 --seeds 3
  python scripts/bench_mitigation.py --report-only
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_common import RECIPES, load_dataset, machine, update_section  # noqa: E402

from drift_jax import config as config_lib  # noqa: E402
from drift_jax import data, stack, streams  # noqa: E402
from drift_jax import mitigate as mitigate_lib  # noqa: E402
from drift_jax.data import scenarios  # noqa: E402
from drift_jax.detect import DetectConfig, detect_drift  # noqa: E402
from drift_jax.files import atomic_write_json  # noqa: E402
from drift_jax.report import write_report  # noqa: E402

CHANGED = (0, 1)  # the classes the relabel / swap touch (a = 0, b = 1)
# Every case's detection: 19 controls, the member fraction and 8 gray images per class (the
# defaults when the rows were measured; mitigation only needs the flagged classes and the run's
# controls).
DETECT = ["controls=19", 'stat="fraction"', "inversion.samples_per_class=8"]
# name -> (dataset, scenario, severity); each dataset runs its `bench_common.RECIPES` recipe
CASES = {
    "digits_label_swap": ("digits", "label_swap", 5),
    "digits_relabel": ("digits", "relabel", 5),
    "mnist_relabel": ("mnist", "relabel", 3),
    "cifar10_relabel": ("cifar10", "relabel", 3),
}


def oracle_accuracy(run: mitigate_lib.Run, built) -> float:
    """A model trained from scratch on production-distribution data of the base + production
    size, evaluated on the mitigation's production-distribution held-out images."""
    cfg = run.config
    images, labels = scenarios.apply(cfg.scenario, built.images[built.base],
                                     built.labels[built.base],
                                     streams.key(cfg.seed, "oracle_scenario"),
                                     cfg.severity, class_names=run.report["class_names"],
                                     **cfg.scenario_params)
    train_images = np.concatenate([images, built.images[built.production]])
    train_labels = np.concatenate([labels, built.labels[built.production]])
    keys = streams.key(cfg.seed, "oracle_train")[None]
    variables = stack.train_stack(run.spec, stack.init_stack(run.spec, keys), train_images,
                                  train_labels, [np.arange(len(train_images))], cfg.train,
                                  keys, progress=False).variables
    acc = stack.evaluate_stack(run.spec, variables, built.images, built.labels,
                               built.production_eval)
    return float(acc["accuracy"][0])


def one_run(case: str, ds: data.Dataset, seed: int) -> dict:
    dataset, scenario, severity = CASES[case]
    cfg = config_lib.with_overrides(DetectConfig(base=dataset), [
        f'scenario="{scenario}"', f"severity={severity}", f"seed={seed}", *DETECT,
        *RECIPES[dataset]])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = detect_drift(cfg, base=ds, progress=False)
        write_report(report, Path(tmp) / "run")
        detect_seconds = time.perf_counter() - start
        # a missed detection still shows what the update would do, on the true classes
        classes = None if report.drifted_classes else tuple(ds.class_names[c] for c in CHANGED)
        start = time.perf_counter()
        result = mitigate_lib.mitigate(Path(tmp) / "run", mitigate_lib.MitigateConfig(
            classes=classes), base=ds, progress=False)
        mitigate_seconds = time.perf_counter() - start
        run = mitigate_lib.load_run(Path(tmp) / "run")
        flagged = np.array([run.report["class_names"].index(c) for c in result.flagged_classes])
        built = mitigate_lib.build_data(run, mitigate_lib.MitigateConfig(), ds, None, flagged)
        oracle = oracle_accuracy(run, built)
    base_acc = result.candidates[0]["production_accuracy"]
    rows = {r["name"]: {"production_accuracy": r["production_accuracy"],
                        "recovered": (r["production_accuracy"] - base_acc) / (oracle - base_acc)
                        if oracle > base_acc else None,
                        "forgetting_points": r["forgetting_points"],
                        "retest_p": r["retest"]["p_value"] if r["retest"] else None,
                        "drift_gone": (not r["retest"]["is_drift"]) if r["retest"] else None}
            for r in result.candidates}
    return {"detected": report.is_drift, "detect_classes": report.drifted_classes,
            "flagged_by_hand": classes is not None, "oracle_accuracy": oracle,
            "recommended": result.recommended, "candidates": rows,
            "detect_seconds": detect_seconds, "mitigate_seconds": mitigate_seconds,
            "cost_vs_detect": mitigate_seconds / detect_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["digits_label_swap", "digits_relabel"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "mitigation.json"))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    out = Path(args.out)
    runs = json.loads(out.read_text())["runs"] if out.exists() else {}
    if not args.report_only:
        for case in args.cases:
            ds = load_dataset(CASES[case][0])
            for seed in range(args.seeds):
                key = f"{case}/{seed}"
                if key in runs:
                    continue
                runs[key] = one_run(case, ds, seed)
                r = runs[key]
                best = r["candidates"].get(r["recommended"] or "", {})
                print(f"{key}: detected {r['detected']} {r['detect_classes']}, recommended "
                      f"{r['recommended']} recovered {best.get('recovered')}, forgetting "
                      f"{best.get('forgetting_points')}, drift gone {best.get('drift_gone')}, "
                      f"cost {r['cost_vs_detect']:.2f}x", flush=True)
                atomic_write_json(out, {"machine": machine(), "runs": runs})
    write_markdown(runs)
    print(f"wrote {out}, BENCHMARKS.md and docs/figures/mitigation.png")


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _fmt(value, spec=".2f") -> str:
    return "-" if value is None else format(value, spec)


def write_markdown(runs: dict) -> list[str]:
    from drift_jax import figures

    cases = sorted({k.split("/")[0] for k in runs})
    lines = ["Per case: seeds, detection rate, then per strategy the mean over seeds of the "
             "share of the base -> oracle gap recovered on production-distribution held-out "
             "data, forgetting (points lost on the unchanged classes), and the share of seeds "
             "whose re-run test no longer flags drift. `recommended`: how often the rule chose "
             "it. Cost: mitigate / detect wall time, same process. "
             "`python scripts/bench_mitigation.py`.", ""]
    recovery = {}
    for case in cases:
        case_runs = [r for k, r in runs.items() if k.split("/")[0] == case]
        names = list(case_runs[0]["candidates"])
        lines += [f"**{case}**: {len(case_runs)} seeds, detected "
                  f"{sum(r['detected'] for r in case_runs)}/{len(case_runs)}, oracle accuracy "
                  f"{_mean(r['oracle_accuracy'] for r in case_runs):.3f}, cost "
                  f"{_mean(r['cost_vs_detect'] for r in case_runs):.2f}x detect "
                  f"(max {max(r['cost_vs_detect'] for r in case_runs):.2f}x)", "",
                  "| model | production acc | gap recovered | forgetting (pt) | drift gone | "
                  "recommended |", "|---|---|---|---|---|---|"]
        for name in names:
            rows = [r["candidates"][name] for r in case_runs]
            gone = _mean(float(x["drift_gone"]) if x["drift_gone"] is not None else None
                         for x in rows)
            lines.append(f"| {name} | {_mean(x['production_accuracy'] for x in rows):.3f} | "
                         f"{_fmt(_mean(x['recovered'] for x in rows))} | "
                         f"{_mean(x['forgetting_points'] for x in rows):+.1f} | {_fmt(gone)} | "
                         f"{sum(r['recommended'] == name for r in case_runs)} |")
            recovery.setdefault(name, {})[case] = _mean(x["recovered"] for x in rows)
        best = [r["candidates"][r["recommended"]] for r in case_runs if r["recommended"]]
        recovered = [x["recovered"] for x in best if x["recovered"] is not None]
        lines += ["", f"Recommended model: gap recovered {_fmt(_mean(recovered))} (min "
                  f"{_fmt(min(recovered, default=None))}), "
                  f"forgetting max {max((x['forgetting_points'] for x in best), default=0):+.1f} "
                  f"pt, drift gone in {sum(bool(x['drift_gone']) for x in best)}/{len(best)}.",
                  ""]
    lines.append(f"Machine: {machine()['processor']}, {machine()['cpu_count']} cores.")
    names = [n for n in recovery if n not in mitigate_lib.REFERENCES]
    figures.grouped_bars(ROOT / "docs" / "figures" / "mitigation.png", cases,
                         {n: [recovery[n].get(c) or np.nan for c in cases] for n in names},
                         "share of the gap recovered", "mitigation: base -> oracle gap recovered",
                         line=0.9)
    update_section("bench_mitigation", "Mitigation (`scripts/bench_mitigation.py`)", lines)
    return lines


if __name__ == "__main__":
    main()
