r"""Detection power curves: scenarios x severities, every seed of a point stacked in one
`detect_drift_seeds` call, and per seed the calibrated p-value of every attack x per-class
statistic x class combination (one run gives them all: `report.attacks[a]["statistics"]`), plus
the baselines. Power at alpha = 0.05 is the fraction of seeds with p <= alpha; under `none` it is
the false-positive rate.

Every seed appends one record to benchmarks/records/<--records>.jsonl (`power_records`: the
point, the environment and the rule that decided it, spelled out); nothing already recorded is
ever rewritten. A killed benchmark resumes where it stopped: a point runs only the seeds its
records lack (a larger --seeds adds seeds). The power section of BENCHMARKS.md and
docs/figures/power_*.png are derived from every records file and the power files committed before
records existed (benchmarks/power*.json, read as they are); --report-only derives them alone.

  python scripts/bench_detection.py --datasets digits            # 31 points x 10 seeds, M = 19
  python scripts/bench_detection.py --datasets mnist --seeds 5 --variant m19_3a \
      --records power_mnist                                      # relabel / label_swap / none
  python scripts/bench_detection.py --variant m49 --points none@0 relabel@2 label_swap@2 \
      --records power_m49                                        # 49 controls, 3 attacks
  python scripts/bench_detection.py --variant m49_s16 --points none@0 relabel@2 label_swap@2 \
      --records power_m49_s16                                    # the default config
  python scripts/bench_detection.py --datasets cifar10 --seeds 3 --none-seeds 3 --variant m19_3a \
      --records power_cifar10_cpu                                # CIFAR-10 reduced for 2 cores
  python scripts/bench_detection.py --datasets cifar10_full --seeds 5 --variant m49_3a \
      --none-seeds 5 --points relabel@3 none@0 --records $OUT/power_cifar10_gpu.jsonl  # a GPU
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

import power_records as records  # noqa: E402
from bench_common import RECIPES, load_dataset, machine_label, update_section  # noqa: E402
from power_records import SCENARIOS  # noqa: E402

from drift_jax import config as config_lib  # noqa: E402

ALPHA = 0.05
SEVERITIES = (1, 2, 3, 4, 5)
# In priority order (the run resumes, so a cut-short benchmark keeps the most important points).
PLANS = {
    "digits": [("none", 0), *[(s, v) for v in (2, 5, 1, 3, 4) for s in SCENARIOS]],
    "mnist": [("none", 0), *[(s, v) for v in (2, 5, 3, 1, 4) for s in ("relabel", "label_swap")]],
    # CIFAR-10: relabel and class_transform at severities 2-5
    "cifar10": [("none", 0), *[(s, v) for v in (3, 5, 2, 4)
                               for s in ("relabel", "class_transform:rotate",
                                         "class_transform:invert")]],
}
PLANS["cifar10_full"] = PLANS["cifar10"]
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
# the same with pooled controls (`DetectConfig.control_data`), and class-stratified too
DESIGNS = {"pooled": ['control_data="pooled"'], "strat": ["stratify_controls=true"],
           "pooled_strat": ['control_data="pooled"', "stratify_controls=true"]}
VARIANTS.update({f"{name}_{design}": ([*overrides, *extra], attacks)
                 for name, (overrides, attacks) in list(VARIANTS.items())
                 for design, extra in DESIGNS.items()})
# the rows of the figures (with every baseline and each run's own decision)
FIGURE_STATISTICS = ("fraction/class_mean", "mean/class_mean", "auc/two_largest_deficits",
                     "logit_mean/largest_deficit", "self_confidence/class_mean",
                     "reverse/two_largest_deficits", *(f"{name}/min_rank"
                                                       for name in records.OMNIBUS_NAMES))
DECISION = "decision"  # the report's row of each run's own decision


def build_config(name: str, scenario: str, severity: int, variant: str):
    """The DetectConfig of a point. Power needs every statistic x combination and every model's
    per-class statistics: ``record="all"``."""
    from drift_jax.detect import DetectConfig

    kind, params, _ = SCENARIOS.get(scenario, ("none", {}, None))
    overrides, attacks = VARIANTS[variant]
    # a variant's overrides come last: they refine the dataset's recipe
    return config_lib.with_overrides(DetectConfig(base=name, record="all"), [
        f'scenario="{kind}"', f"severity={severity}", f"scenario_params={json.dumps(params)}",
        f"attacks={json.dumps(attacks)}", *RECIPES[name], *overrides])


def make_records(cfg, point: dict, seeds: list[int], reports: list, seconds: float,
                 class_names: list[str], confusion: bool = False) -> list[dict]:
    """One record per seed of a point's reports (`power_records`), each stating the rule that
    decided it as data."""
    from drift_jax.detect import MODEL_STATISTICS, OMNIBUS
    from drift_jax.report import report_to_json

    config = config_lib.to_dict(cfg)
    changed = SCENARIOS.get(point["scenario"], (None, None, None))[2]
    out = []
    for seed, report in zip(seeds, reports):
        report = report_to_json(report)  # report.json's shape
        attacks = report["attacks"]
        # each attack's omnibus: the parts of `OMNIBUS` whose statistics it has (as `detect`)
        parts = {a: [list(q) for q in OMNIBUS if q[0] in (r["class_statistics"] or {})]
                 for a, r in attacks.items()}
        flat = {f"{a}:{k}": v for a, r in attacks.items()
                for k, v in (r["statistics"] or {}).items()}
        flat.update({f"baseline:{b}": r["p_value"] for b, r in report["baselines"].items()})
        p_values, definitions = records.canonical_p_values(
            flat, lambda a, _, parts=parts: parts[a], MODEL_STATISTICS)
        primary = attacks[cfg.primary_attack]
        decision = {"attack": cfg.primary_attack, "stat": cfg.stat,
                    "combination": cfg.combination, "controls": cfg.controls,
                    "alpha": cfg.alpha}
        if cfg.stat == "omnibus":
            decision["parts"] = parts[cfg.primary_attack]
        name = records.omnibus_name(decision["parts"]) if cfg.stat == "omnibus" else cfg.stat
        decision["statistic"] = next(
            (k for k in (f"{cfg.primary_attack}:{name}/{cfg.combination}",
                         f"model:{name}/{cfg.combination}") if k in p_values), None)
        decision["p_value"] = primary["p_value"]
        decision["drift"] = primary["p_value"] is not None and primary["p_value"] <= cfg.alpha
        per_class = primary["per_class"]
        record = {
            "schema_version": records.SCHEMA_VERSION, "benchmark": "power",
            "written": records.now(), "environment": report["environment"],
            "code": report.get("drift_jax") or records.code_version(),
            "point": {**point, "seed": seed}, "config": config, "decision": decision,
            "localisation": {"statistics": list(per_class.get("p_value_by_statistic") or {}),
                             "correction": cfg.correction, "alpha": cfg.alpha,
                             "gated_by_decision": True},
            "definitions": definitions, "p_values": p_values,
            # per attack: the classes its per-class test flags (corrected, ungated)
            "classes": {a: [report["class_names"][k] for k in np.flatnonzero(
                np.asarray(r["per_class"]["p_value_corrected"]) <= cfg.alpha)]
                for a, r in attacks.items()},
            "named": report["drifted_classes"],  # gated by the decision, with partners
            "changed": [class_names[c] for c in sorted(changed or ())],
            "partners": report["localisation"].get("partners", {}),
            "accuracy": report["accuracy"]["base"], "seconds": seconds / len(seeds),
            "timings": report["timings"],  # per stage, all seeds together, and compiles
            # every model's (base, production, controls) per-class statistics of the primary
            # attack: other combinations are evaluated offline from them
            "class_statistics_attack": cfg.primary_attack,
            "class_statistics": primary["class_statistics"]}
        if confusion:  # [models, C, C]: for statistics of the base model's answers (offline)
            record["confusion"] = np.round(report["localisation"]["confusion"], 4).tolist()
        out.append(record)
    return out


def run_point(ds, name: str, scenario: str, severity: int, seeds: list[int], variant: str,
              path: Path, confusion: bool = False) -> list[dict]:
    """Runs ``seeds`` of a point and appends their records to ``path``, one by one."""
    from drift_jax.detect import detect_drift_seeds

    cfg = build_config(name, scenario, severity, variant)
    start = time.perf_counter()
    reports = detect_drift_seeds(cfg, seeds, base=ds, progress=False)
    point = {"dataset": name, "variant": variant, "scenario": scenario, "severity": severity}
    made = make_records(cfg, point, seeds, reports, time.perf_counter() - start,
                        list(ds.class_names), confusion)
    for record in made:
        records.append_record(path, record)
    return made


def records_path(name: str) -> Path:
    """--records: a name in benchmarks/records, or a path to a .jsonl file."""
    if name.endswith(".jsonl") or "/" in name:
        path = Path(name)
        if path.suffix != ".jsonl":
            raise SystemExit(f"--records {name}: records files end in .jsonl")
        return path
    return records.RECORDS_DIR / f"{name}.jsonl"


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
    parser.add_argument("--records", default="power",
                        help="the records file to append to: a name in benchmarks/records "
                             "(default: power) or a path ending in .jsonl")
    parser.add_argument("--confusion", action="store_true",
                        help="record every model's confusion on gray data (report.localisation), "
                             "for scripts/offline_statistics.py")
    parser.add_argument("--report-only", action="store_true",
                        help="only derive BENCHMARKS.md and the figures from the records")
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    warnings.simplefilter("default", records.RecordWarning)
    path = records_path(args.records)
    if not args.report_only:
        for name in args.datasets:
            ds = load_dataset(name)
            # --points run in the order given (a cut-short run keeps the first)
            plan = PLANS[name] if not args.points else [
                (s, v) for point in args.points for s, v in PLANS[name]
                if f"{s}@{v}" == point]
            for scenario, severity in plan:
                point = {"dataset": name, "variant": args.variant, "scenario": scenario,
                         "severity": severity}
                # seeds not yet recorded: raising --seeds adds seeds to a point
                done = records.seeds_done(path, point)
                seeds = [s for s in range(args.none_seeds if scenario == "none" else args.seeds)
                         if s not in done]
                if not seeds:
                    continue
                run_point(ds, name, scenario, severity, seeds, args.variant, path,
                          args.confusion)
                runs = records.load_points([path])[records.point_key(point)]
                print(f"{records.point_key(point)}: {summary(runs)}", flush=True)
    # the report covers every records file (variants may run as separate processes, on other
    # machines: each record carries its own environment) and the committed power files
    paths = [*records.legacy_files(), *records.record_files()]
    if path.exists() and path.resolve() not in {p.resolve() for p in paths}:
        paths.append(path)
    write_report(records.load_points(paths))
    print(f"wrote BENCHMARKS.md and docs/figures/power_*.png from {len(paths)} files: "
          + ", ".join(p.name for p in paths))


def power(runs: list[dict], method: str) -> float:
    """The fraction of ``runs`` that ``method`` finds: p <= `ALPHA`, or for `DECISION` each
    run's own decision (its rule and alpha)."""
    if method == DECISION:
        return float(np.mean([bool(r["decision"]["drift"]) for r in runs]))
    return float(np.mean([r["p_values"].get(method, 1.0) <= ALPHA for r in runs]))


def summary(runs: list[dict]) -> str:
    shown = [DECISION, "rule_based:omnibus[mean,auc,logit_mean]/min_rank",
             "baseline:disagreement"]
    return ", ".join(f"{m} {power(runs, m):.1f}" for m in shown) + \
        f"; {sum(r.get('seconds') or 0 for r in runs):.0f} s"


def _sorted_keys(points: dict, grid: str) -> list[str]:
    return sorted((k for k in points if k.startswith(grid + "/")),
                  key=lambda k: (k.split("/")[1] != "none", k.split("/")[1],
                                 int(k.split("/")[2])))


def decision_lines(points: dict, keys: list[str]) -> list[str]:
    """The rules that decided a grid's runs, with how many runs each decided."""
    counts: dict[str, int] = {}
    for k in keys:
        for r in points[k]:
            rule = records.describe_rule(r["decision"])
            counts[rule] = counts.get(rule, 0) + 1
    notes = sorted({r["decision"]["note"] for k in keys for r in points[k]
                    if r["decision"].get("note")})
    return [f"Row `{DECISION}`: each run's own decision, by "
            + "; ".join(f"`{rule}` ({n} runs)" for rule, n in sorted(counts.items()))
            + "." + "".join(f" ({note}.)" for note in notes)]


def localisation_lines(points: dict, keys: list[str]) -> list[str]:
    """Per point, of the runs that recorded their named classes (gated by their decision) and
    detected: how often they name the changed classes."""
    lines = []
    for k in keys:
        changed = SCENARIOS.get(k.split("/")[1], (None, None, None))[2]
        runs = [r for r in points[k] if "named" in r and r["decision"]["drift"]]
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


def report_lines(points: dict) -> tuple[list[str], dict[str, tuple[list[dict], list[str]]]]:
    """The power section's lines and, per grid with a scenario, its figure's table and rows;
    derived from ``points`` (`power_records.load_points`), which are only read."""
    grids = sorted({k.split("/")[0] for k in points})
    lines = [f"Power at alpha = {ALPHA} (fraction of seeds with p <= alpha; under `none`, the "
             "false-positive rate) of every attack x per-class statistic / class combination "
             "(`DetectConfig.stat` / `combine`; `model:` the models' own statistics, the same "
             "for every attack) and every baseline; an omnibus is named by its parts. Columns: "
             "scenario@severity. Derived from benchmarks/records/*.jsonl and the power files "
             "committed before records (benchmarks/power*.json) by "
             "`python scripts/bench_detection.py --report-only`.", ""]
    figures = {}
    for grid in grids:
        keys = _sorted_keys(points, grid)
        cols = [f"{k.split('/')[1]}@{k.split('/')[2]}" for k in keys]
        seeds = sorted({len(points[k]) for k in keys})
        # the methods every point of this grid measured (a variant may predate a statistic)
        methods = [DECISION, *sorted(set.intersection(
            *[{m for r in points[k] for m in r["p_values"]} for k in keys]))]
        lines += [f"**{grid}** ({'/'.join(map(str, seeds))} seeds per point)", "",
                  "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for m in methods:
            lines.append(f"| {m} | " + " | ".join(f"{power(points[k], m):.1f}" for k in keys)
                         + " |")
        lines += ["", *decision_lines(points, keys), "", *localisation_lines(points, keys), ""]
        scenarios = sorted({k.split("/")[1] for k in keys} - {"none"})
        if not scenarios:  # only `none` (a calibration run): no curve to draw
            continue
        table = [{"scenario": scenario, "severity": int(k.split("/")[2]),
                  **{m: power(points[k], m) for m in methods}}
                 for scenario in scenarios for k in keys if k.split("/")[1] in (scenario, "none")]
        shown = [m for m in methods if m == DECISION or m.startswith("baseline:") or (
            m.split(":")[0] in ("rule_based", "model") and m.split(":")[1] in FIGURE_STATISTICS)]
        figures[grid] = (table, shown)
    seconds = {g: [r["seconds"] for k in _sorted_keys(points, g) for r in points[k]
                   if r.get("seconds") is not None] for g in grids}
    machines = {g: " / ".join(sorted({machine_label(r["environment"])
                                      for k in _sorted_keys(points, g) for r in points[k]}))
                for g in grids}
    lines += ["Median seconds per seed (seeds stacked): "
              + ", ".join(f"{g} {np.median(s):.0f} s ({machines[g]})"
                          for g, s in seconds.items() if s) + "."]
    return lines, figures


def write_report(points: dict) -> None:
    """BENCHMARKS.md's power section and docs/figures/power_*.png, derived from ``points``."""
    from drift_jax import figures

    lines, tables = report_lines(points)
    for grid, (table, shown) in tables.items():
        slug = grid.replace("[", "_").replace("]", "")
        figures.rate_against(ROOT / "docs" / "figures" / f"power_{slug}.png", table,
                             "severity", shown, ["scenario"])
    update_section("bench_power", "Detection power curves (`scripts/bench_detection.py`)", lines)


if __name__ == "__main__":
    main()
