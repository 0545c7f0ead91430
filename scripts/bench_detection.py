"""Detection power curves (issue 13): scenarios x severities, every seed of a point stacked in one
`detect_drift_seeds` call, and per seed the calibrated p-value of every attack x per-class
statistic x class combination (one run gives them all: `report.attacks[a]["statistics"]`), plus
the baselines. Power at alpha = 0.05 is the fraction of seeds with p <= alpha; under `none` it is
the false-positive rate. Writes benchmarks/power.json after every point (a killed benchmark
resumes where it stopped; a larger --seeds runs only the seeds a point lacks), the power
section of BENCHMARKS.md and docs/figures/power_*.png.

  python scripts/bench_detection.py --datasets digits            # 31 points x 10 seeds, M = 19
  python scripts/bench_detection.py --datasets mnist --seeds 5 --variant m19_3a \
      --out benchmarks/power_mnist.json                         # relabel / label_swap / none
  python scripts/bench_detection.py --variant m49 --points none@0 relabel@2 label_swap@2 \
      --out benchmarks/power_m49.json                           # 49 controls, 3 attacks
  python scripts/bench_detection.py --variant m49_s16 --points none@0 relabel@2 label_swap@2 \
      --out benchmarks/power_m49_s16.json                       # the default config (severity
                                                                # 1 and 3: power_m49_s16_sev13)
  python scripts/bench_detection.py --datasets cifar10 --seeds 3 --none-seeds 3 --variant m19_3a \
      --out benchmarks/power_cifar10_cpu.json                   # CIFAR-10 reduced for 2 cores
  python scripts/bench_detection.py --datasets cifar10_full --seeds 5 --variant m49_3a \
      --none-seeds 5 --points relabel@3 none@0 --out $OUT/power_cifar10_gpu.json  # a GPU
  python scripts/bench_detection.py --report-only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_common import RECIPES, load_dataset, machine, machine_label, update_section  # noqa: E402
from offline_statistics import update  # noqa: E402

from drift_jax import config as config_lib  # noqa: E402
from drift_jax.detect import OMNIBUS, DetectConfig, detect_drift_seeds  # noqa: E402
from drift_jax.files import atomic_write_json  # noqa: E402

ALPHA = 0.05
SEVERITIES = (1, 2, 3, 4, 5)
# scenario name -> (DetectConfig scenario, scenario_params); changed classes for localisation
SCENARIOS = {
    "relabel": ("relabel", {}, {0, 1}),
    "label_swap": ("label_swap", {}, {0, 1}),
    "class_transform:rotate": ("class_transform", {"kind": "rotate"}, {0}),
    "class_transform:invert": ("class_transform", {"kind": "invert"}, {0}),
    "label_noise": ("label_noise", {}, None),
    "prior_shift": ("prior_shift", {}, {0, 1}),
}
# In priority order (the run resumes, so a cut-short benchmark keeps the most important points).
PLANS = {
    "digits": [("none", 0), *[(s, v) for v in (2, 5, 1, 3, 4) for s in SCENARIOS]],
    "mnist": [("none", 0), *[(s, v) for v in (2, 5, 3, 1, 4) for s in ("relabel", "label_swap")]],
    # the CIFAR-10 grid: relabel and class_transform at severities 2-5
    "cifar10": [("none", 0), *[(s, v) for v in (3, 5, 2, 4)
                               for s in ("relabel", "class_transform:rotate",
                                         "class_transform:invert")]],
}
PLANS["cifar10_full"] = PLANS["cifar10"]
PRIMARY = "rule_based:omnibus/min_rank"  # the default decision
# none needs 10 seeds (the false-positive rate; --none-seeds); others take --seeds
NONE_SEEDS = 10
ATTACKS = ["rule_based", "black_box", "shadow", "lira", "loss", "confidence",
           "modified_entropy"]
# Variants of the recipe (`--variant`), stored under "dataset[variant]": the number of controls
# (the smallest p-value is 1 / (M + 1)), gray images per class (m49_s16 is the default config),
# fewer attacks (faster; m19_3a / m49_3a: MNIST and CIFAR-10, whose recipes set their own gray
# images; m19_s16_3a: 16 of them). A variant's settings override the dataset's recipe.
THREE_ATTACKS = ["rule_based", "loss", "black_box"]
VARIANTS = {"m19": (["controls=19", "inversion.samples_per_class=8"], ATTACKS),
            "m49": (["controls=49", "inversion.samples_per_class=8"], THREE_ATTACKS),
            "m49_s16": (["controls=49", "inversion.samples_per_class=16"], THREE_ATTACKS),
            "m19_3a": (["controls=19"], THREE_ATTACKS),
            "m49_3a": (["controls=49"], THREE_ATTACKS),
            "m19_s16_3a": (["controls=19", "inversion.samples_per_class=16"], THREE_ATTACKS)}
# the same with pooled controls (`DetectConfig.control_data`), and class-stratified too (session 12)
DESIGNS = {"pooled": ['control_data="pooled"'], "strat": ["stratify_controls=true"],
           "pooled_strat": ['control_data="pooled"', "stratify_controls=true"]}
VARIANTS.update({f"{name}_{design}": ([*overrides, *extra], attacks)
                 for name, (overrides, attacks) in list(VARIANTS.items())
                 for design, extra in DESIGNS.items()})


def run_point(ds, name: str, scenario: str, severity: int, seeds: list[int],
              variant: str = "m19", confusion: bool = False) -> list[dict]:
    kind, params, changed = SCENARIOS.get(scenario, ("none", {}, None))
    overrides, attacks = VARIANTS[variant]
    # a variant's overrides come last: they refine the dataset's recipe
    cfg = config_lib.with_overrides(DetectConfig(base=name), [
        f'scenario="{kind}"', f"severity={severity}", f"scenario_params={json.dumps(params)}",
        f"attacks={json.dumps(attacks)}", *RECIPES[name], *overrides])
    start = time.perf_counter()
    reports = detect_drift_seeds(cfg, seeds, base=ds, progress=False)
    seconds = time.perf_counter() - start
    out = []
    for seed, report in zip(seeds, reports):
        decision = report.attacks[cfg.primary_attack]["statistic"]
        p_values = {f"{a}:{k}": v for a, r in report.attacks.items()
                    for k, v in r["statistics"].items()}
        p_values.update({f"baseline:{b}": r["p_value"] for b, r in report.baselines.items()})
        classes = {a: [report.class_names[k] for k in np.flatnonzero(
            np.asarray(r["per_class"]["p_value_corrected"]) <= ALPHA)]
            for a, r in report.attacks.items()}
        out.append({"seed": seed, "p_values": p_values, "classes": classes,
                    "named": report.drifted_classes,  # gated, with partners
                    "changed": [ds.class_names[c] for c in sorted(changed or ())],
                    "partners": report.localisation.get("partners", {}),
                    "accuracy": report.accuracy["base"], "seconds": seconds / len(seeds),
                    "timings": report.timings,  # per stage, all seeds together, and compiles
                    # the statistic that decided (and gated `named`): the default may change
                    "decided_by": f"{cfg.primary_attack}:{decision}",
                    "omnibus_parts": [list(part) for part in OMNIBUS],  # what "omnibus" was
                    # the primary attack's per-class statistics of every model (base,
                    # production, controls): other combinations can be evaluated offline
                    "class_statistics": report.attacks[cfg.primary_attack]["class_statistics"]})
        if confusion:  # [models, C, C]: for statistics of the base model's answers (offline)
            out[-1]["confusion"] = np.round(report.localisation["confusion"], 4).tolist()
        update(out[-1])  # the earlier default omnibuses too, side by side with today's
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["digits"])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--variant", default="m19", choices=list(VARIANTS))
    parser.add_argument("--none-seeds", type=int, default=NONE_SEEDS,
                        help="seeds of the `none` point (its false-positive rate)")
    parser.add_argument("--points", nargs="+",
                        help="scenario@severity to run, in this order (default: all)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "power.json"))
    parser.add_argument("--confusion", action="store_true",
                        help="store every model's confusion on gray data (report.localisation), "
                             "for scripts/offline_statistics.py")
    parser.add_argument("--report-only", action="store_true",
                        help="only rewrite BENCHMARKS.md and the figures from the saved points")
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    out = Path(args.out)
    points = json.loads(out.read_text())["points"] if out.exists() else {}
    if not args.report_only:
        for name in args.datasets:
            ds = load_dataset(name)
            # --points run in the order given (a cut-short run keeps the first)
            plan = PLANS[name] if not args.points else [
                (s, v) for point in args.points for s, v in PLANS[name]
                if f"{s}@{v}" == point]
            for scenario, severity in plan:
                key = f"{name}[{args.variant}]/{scenario}/{severity}"
                # seeds not yet run: raising --seeds adds seeds to a stored point
                done = {r["seed"] for r in points.get(key, [])}
                seeds = [s for s in range(args.none_seeds if scenario == "none" else args.seeds)
                         if s not in done]
                if not seeds:
                    continue
                points[key] = points.get(key, []) + run_point(
                    ds, name, scenario, severity, seeds, args.variant, args.confusion)
                print(f"{key}: {summary(points[key])}", flush=True)
                atomic_write_json(out, {"machine": machine(), "alpha": ALPHA, "points": points},
                                  indent=None)  # per-class statistics of 50 models per run
    # the report covers every points file (variants may run as separate processes, on other
    # machines: each file records its own)
    machines = {}
    for other in sorted(out.parent.glob("power*.json")):
        saved = json.loads(other.read_text())
        points = {**saved["points"], **points}
        machines.update({k.split("/")[0]: machine_label(saved["machine"])
                         for k in saved["points"]})
    write_markdown(points, machines)
    print(f"wrote BENCHMARKS.md and docs/figures/power_*.png from {out.parent}/power*.json")


def power(runs: list[dict], method: str) -> float:
    return float(np.mean([r["p_values"].get(method, 1.0) <= ALPHA for r in runs]))


def summary(runs: list[dict]) -> str:
    shown = [PRIMARY, "rule_based:omnibus[mean,auc,logit_mean]/min_rank",
             "baseline:disagreement"]
    return ", ".join(f"{m} {power(runs, m):.1f}" for m in shown) + \
        f"; {runs[0]['seconds'] * len(runs):.0f} s"


def localisation_lines(points: dict, keys: list[str]) -> list[str]:
    """Per point recorded with the run's named classes (gated by its decision, the default
    omnibus): how often the detected runs name the changed classes."""
    lines = []
    for k in keys:
        changed = SCENARIOS.get(k.split("/")[1], (None, None, None))[2]
        runs = [r for r in points[k] if "named" in r
                and r["p_values"].get(r.get("decided_by", PRIMARY), 1.0) <= ALPHA]
        if not changed or not runs:
            continue
        named = [set(r["named"]) for r in runs]
        # the changed classes' names (older records: the digit sets', whose names are indices)
        changed = set(runs[0].get("changed") or map(str, changed))
        lines.append(f"- {k.split('/')[1]}@{k.split('/')[2]}: of {len(runs)} detected runs, the "
                     f"changed classes {', '.join(sorted(changed))} named in "
                     f"{sum(changed <= n for n in named)} (exactly them in "
                     f"{sum(changed == n for n in named)}).")
    return (["Localisation (`drifted_classes`: the per-class test, then each flagged class's "
             "destination):", "", *lines] if lines else [])


def write_markdown(points: dict, machines: dict[str, str]) -> None:
    from drift_jax import figures

    datasets = sorted({k.split("/")[0] for k in points})
    lines = [f"Power at alpha = {ALPHA} (fraction of seeds with p <= alpha; under `none`, the "
             "false-positive rate) of every attack x per-class statistic / class combination "
             "(`DetectConfig.stat` / `combine`) and every baseline. Columns: scenario@severity. "
             "`python scripts/bench_detection.py`.", ""]
    for name in datasets:
        keys = sorted((k for k in points if k.startswith(name + "/")),
                      key=lambda k: (k.split("/")[1] != "none", k.split("/")[1],
                                     int(k.split("/")[2])))
        cols = [f"{k.split('/')[1]}@{k.split('/')[2]}" for k in keys]
        seeds = sorted({len(points[k]) for k in keys})
        # the methods every point of this grid measured (a variant may predate a statistic)
        methods = sorted(set.intersection(*[{m for r in points[k] for m in r["p_values"]}
                                             for k in keys]))
        lines += [f"**{name}** ({'/'.join(map(str, seeds))} seeds per point)", "",
                  "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for m in methods:
            lines.append(f"| {m} | " + " | ".join(f"{power(points[k], m):.1f}" for k in keys)
                         + " |")
        lines += ["", *localisation_lines(points, keys), ""]
        scenarios = sorted({k.split("/")[1] for k in keys} - {"none"})
        table = [{"scenario": scenario, "severity": int(k.split("/")[2]),
                  **{m: power(points[k], m) for m in methods}}
                 for scenario in scenarios for k in keys if k.split("/")[1] in (scenario, "none")]
        shown = [m for m in methods if m.split(":")[0] == "rule_based" and m.split(":")[1] in (
            "fraction/class_mean", "mean/class_mean", "auc/two_largest_deficits",
            "logit_mean/largest_deficit", "self_confidence/class_mean",
            "reverse/two_largest_deficits", "omnibus/min_rank", "omnibus[mean,auc]/min_rank",
            "omnibus[mean,auc,logit_mean]/min_rank")]
        shown += [m for m in methods if m.startswith("baseline:")]
        slug = name.replace("[", "_").replace("]", "")
        if not scenarios:  # only `none` (a calibration run): no curve to draw
            continue
        figures.rate_against(ROOT / "docs" / "figures" / f"power_{slug}.png", table,
                             "severity", shown, ["scenario"])
    seconds = {n: np.median([r["seconds"] for k, runs in points.items() if k.startswith(n)
                             for r in runs]) for n in datasets}
    lines += ["Median seconds per seed (seeds stacked): "
              + ", ".join(f"{n} {s:.0f} s ({machines.get(n, machine_label(machine()))})"
                          for n, s in seconds.items()) + "."]
    update_section("bench_power", "Detection power curves (`scripts/bench_detection.py`)", lines)


if __name__ == "__main__":
    main()
