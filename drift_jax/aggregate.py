"""`drift-jax report SWEEP_DIR`: every finished run under a folder -> tables and figures.

Runs are found by their ``report.json`` (any depth, so the folders of several sweep tasks or
machines merge by being put side by side) and read by `report.read_run_report`. Grouped by
every config key that varies across the runs except ``seed``; per group, the detection rate at
each run's alpha of every method: the calibrated test per attack (``attack:X``), the original
seed rule (``seed_rule:X``), the permutation test base gray vs production gray
(``permutation:X``) and each baseline; and mean±sd over seeds of the accuracies and of each
attack's member fraction, base / production gray data (the original work's table).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from drift_jax import validate
from drift_jax.data import scenarios
from drift_jax.detect.results import DriftReport
from drift_jax.errors import DriftJaxError
from drift_jax.files import atomic_folder, atomic_write_bytes, atomic_write_json
from drift_jax.report import read_run_report

IGNORED_KEYS = ("seed",)
REPORT_FIX = "delete its run folder and run the sweep again to redo it."


def run_flags(report: DriftReport) -> dict[str, bool]:
    """Method -> flagged, for one run."""
    alpha = report.config["alpha"]
    flags = {}
    for name, a in report.attacks.items():
        if a.p_value is not None:
            flags[f"attack:{name}"] = a.p_value <= alpha
        flags[f"seed_rule:{name}"] = a.seed_rule.is_drift
        flags[f"permutation:{name}"] = a.permutation_test.p_value <= alpha
    flags.update({f"baseline:{b}": r.is_drift for b, r in report.baselines.items()})
    return flags


def swapped_classes_found(report: DriftReport) -> bool | None:
    """For a label swap: were exactly the two swapped classes named? (None otherwise.)"""
    scenario = report.scenario
    if scenario.get("name") != "label_swap":
        return None
    params, names = scenario.get("params") or {}, report.class_names
    a, b = (names[scenarios.class_index(params.get(p, default), names, f"scenario params {p}")]
            for p, default in (("a", 0), ("b", 1)))  # params may name the classes
    return set(report.drifted_classes) == {a, b}


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = json.dumps(value) if isinstance(value, list | dict) else value
    return out


# The top-level keys that mark a `drift-jax mitigate` report.json (`mitigate.MitigationReport`),
# which may lie inside a run folder (`detect --mitigate` writes RUN/mitigation/): not a run.
MITIGATION_REPORT_KEYS = frozenset({"candidates", "recommended", "changed_classes"})


def is_mitigation_report(path: Path) -> bool:
    """Whether a report.json is a mitigation's (a damaged file is not: reading it as a run
    names its problem)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and set(raw) >= MITIGATION_REPORT_KEYS


def run_folders(sweep_dir: Path) -> list[Path]:
    """Every finished run folder under ``sweep_dir`` (it holds report.json), at any depth."""
    return [path.parent for path in sorted(sweep_dir.rglob("report.json"))
            # a run still being written (atomic_folder's temporary sibling) is skipped
            if not any(part.startswith(".") for part in path.relative_to(sweep_dir).parts)]


def collect(sweep_dir: str | Path) -> list[dict]:
    """One row per finished run: its flattened config, flags, p-value, timings."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise DriftJaxError(f"{sweep_dir} is not a folder; give the --out folder of a sweep.")
    rows, mitigations = [], []
    for run in run_folders(sweep_dir):
        path = run / "report.json"
        if is_mitigation_report(path):
            mitigations.append(path)
            continue
        rows.append(_row(path))
    if not rows:
        also = (f" (only the mitigation report {mitigations[0]}, which `drift-jax report` does "
                "not summarise)" if mitigations else "")
        raise DriftJaxError(f"no finished runs (report.json) under {sweep_dir}{also}; point at "
                            "a sweep or detect run folder.")
    return rows


def _row(path: Path) -> dict:
    """A run's row; a value of the wrong type below the top level of its report.json (an edited
    file) is named as that file's problem."""
    report = read_run_report(path.parent, REPORT_FIX)
    try:
        if not isinstance(report.config.get("alpha"), float):
            raise TypeError("config.alpha is not a number")
        row = {"run": path.parent.name, "config": _flatten(report.config),
               "flags": run_flags(report), "p_value": _number_or_none(report.p_value),
               "swap_found": swapped_classes_found(report),
               "seconds": float(report.timings.get("total", float("nan"))),
               "base_accuracy": float(report.accuracy.base),
               "production_accuracy": float(report.accuracy.production),
               "members": {n: (float(a.base_member_fraction),
                               float(a.production_member_fraction))
                           for n, a in report.attacks.items()},
               "scores": {n: {"production": float(a.production_score),
                              "controls": [float(c) for c in a.control_scores],
                              "p_value": _number_or_none(a.p_value)}
                          for n, a in report.attacks.items()}}
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
        raise DriftJaxError(f"run report {path} does not have the layout drift_jax writes "
                            f"({type(e).__name__}: {e}); {REPORT_FIX}") from None
    if not all(isinstance(flag, bool | np.bool_) for flag in row["flags"].values()):
        raise DriftJaxError(f"run report {path} has a verdict that is not true or false; "
                            f"{REPORT_FIX}")
    return row


def _number_or_none(value) -> float | None:
    return None if value is None else float(value)


def varying_keys(rows: list[dict]) -> list[str]:
    keys = sorted({k for r in rows for k in r["config"]})
    return [k for k in keys if k not in IGNORED_KEYS
            and len({json.dumps(r["config"].get(k)) for r in rows}) > 1]


def summarize(rows: list[dict]) -> tuple[list[str], list[str], list[dict]]:
    """(group keys, methods, one dict per group with its detection rates)."""
    keys = varying_keys(rows)
    methods = sorted({m for r in rows for m in r["flags"]})
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r["config"].get(k) for k in keys), []).append(r)
    table = []
    for values, runs in sorted(groups.items(), key=lambda kv: json.dumps(kv[0])):
        swaps = [r["swap_found"] for r in runs if r["swap_found"] is not None]
        table.append({
            **dict(zip(keys, values)), "runs": len(runs),
            **{m: float(np.mean([r["flags"][m] for r in runs if m in r["flags"]]))
               if any(m in r["flags"] for r in runs) else None for m in methods},
            "swap_classes": float(np.mean(swaps)) if swaps else None,
            "base_accuracy": _mean_sd([r["base_accuracy"] for r in runs]),
            "production_accuracy": _mean_sd([r["production_accuracy"] for r in runs]),
            **{f"members:{a}": " / ".join(_mean_sd([r["members"][a][i] for r in runs])
                                          for i in (0, 1))
               for a in sorted({a for r in runs for a in r["members"]})},
            "seconds": float(np.median([r["seconds"] for r in runs]))})
    return keys, methods, table


def _mean_sd(values) -> str:
    """'mean±sd' over seeds (sd omitted for one run)."""
    values = np.asarray(values, float)
    return f"{values.mean():.3f}" + (f"±{values.std(ddof=1):.3f}" if values.size > 1 else "")


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown(keys: list[str], methods: list[str], table: list[dict]) -> str:
    extra = sorted({c for row in table for c in row if c.startswith("members:")})
    cols = [*keys, "runs", *methods, "swap_classes", "base_accuracy", "production_accuracy",
            *extra, "seconds"]
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in cols) + " |" for row in table]
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict], cols: list[str]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, cols, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def write(sweep_dir: str | Path, out: str | Path | None = None,
          overwrite: bool = False) -> dict:
    """runs.csv, summary.csv, summary.md, summary.json and figures/ in ``out`` (default
    ``SWEEP_DIR/report``), written whole; a finished report or run there is replaced only with
    ``overwrite``, and never the folder read or a run in it; returns the summary."""
    sweep_dir = Path(sweep_dir)
    runs = run_folders(sweep_dir) if sweep_dir.is_dir() else []
    # The report may lie inside what it reads (its default does), but never be or hold it.
    inputs = [validate.Input(run, "a finished run", holds_outputs=True) for run in runs] + [
        validate.Input(sweep_dir, "the folder of runs", holds_outputs=True)]
    out = validate.output_folder(out or sweep_dir / "report", overwrite, inputs=inputs)
    rows = collect(sweep_dir)
    with atomic_folder(out, overwrite) as tmp:
        summary = _write_summary(rows, tmp)
    return summary


def _write_summary(rows: list[dict], out: Path) -> dict:
    from drift_jax import figures

    keys, methods, table = summarize(rows)
    flat_rows = [{"run": r["run"], **{k: r["config"].get(k) for k in [*keys, "seed"]},
                  **r["flags"], "p_value": r["p_value"], "swap_found": r["swap_found"],
                  "seconds": r["seconds"]} for r in rows]
    atomic_write_bytes(out / "runs.csv", _csv(flat_rows, list(flat_rows[0]) + [
        m for m in methods if m not in flat_rows[0]]))
    atomic_write_bytes(out / "summary.csv", _csv(table, list(table[0])))
    atomic_write_bytes(out / "summary.md", markdown(keys, methods, table).encode())
    if "severity" in keys:
        figures.rate_against(out / "figures" / "detection_vs_severity.png", table, "severity",
                             [m for m in methods if not m.startswith("permutation")],
                             [k for k in keys if k != "severity"])
    for attack in sorted({a for r in rows for a in r["scores"]}):
        nulls = [(r["run"], r["scores"][attack]) for r in rows if attack in r["scores"]
                 and r["scores"][attack]["controls"]]
        if nulls:
            figures.null_strips(out / "figures" / f"nulls_{attack}.png", nulls[:40],
                                title=f"{attack}: control scores (grey) and production (red)")
    summary = {"runs": len(rows), "group_keys": keys, "methods": methods, "groups": table}
    atomic_write_json(out / "summary.json", summary)
    return summary
