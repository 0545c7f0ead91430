"""One run on disk: `DriftReport` <-> report.json, and the run folder (`write_report`,
`read_run_report`).

report.json is the only place a run's results are shaped as JSON. It carries
``schema_version`` (`SCHEMA_VERSION`) and the drift_jax version and commit that wrote it;
readers migrate the versions they know explicitly (`MIGRATIONS`) and refuse the others with a
message that says what to do.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import io
import subprocess
import zipfile
from pathlib import Path

import numpy as np

from drift_jax import validate
from drift_jax.detect.results import (
    Accuracy,
    AttackResult,
    BaselineResult,
    ClassMeans,
    DriftReport,
    Localisation,
    NullCheck,
    Partner,
    PerClass,
    SeedRule,
    TestResult,
)
from drift_jax.errors import DriftJaxError
from drift_jax.files import atomic_folder, atomic_write_bytes, atomic_write_json

SCHEMA_VERSION = 2  # 1: report.json without a version (the same fields, no provenance)
MODEL_MEMBERS = ("base", "production")  # the members of a run folder's models/ checkpoint
# report.json's top level, as `validate.read_json` checks it
REPORT_SCHEMA = {"schema_version": int, "drift_jax": dict, "is_drift": bool,
                 "p_value": (float, type(None)), "drifted_classes": list, "attacks": dict,
                 "baselines": dict, "accuracy": dict, "timings": dict, "config": dict,
                 "class_names": list, "scenario": dict, "environment": dict,
                 "localisation": dict}
ROUNDING = 6  # decimals of the per-model arrays (class statistics, confusion)


@functools.cache
def provenance() -> dict:
    """drift_jax's version and, when it runs from a git checkout, its commit."""
    try:
        version = importlib.metadata.version("drift_jax")
    except importlib.metadata.PackageNotFoundError:
        version = None
    try:
        found = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"],
                               capture_output=True, text=True, timeout=10)
        commit = found.stdout.strip() if found.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"version": version, "commit": commit or None}


# ----------------------------------------------------------------------------- to JSON


def _plain(value):
    """Arrays and numpy scalars -> lists and Python numbers, through dicts and lists."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _rounded(value):
    """In float64: a float32 rounded to six decimals is not six decimals long in JSON."""
    return None if value is None else np.round(np.asarray(value, np.float64), ROUNDING).tolist()


def attack_to_json(a: AttackResult) -> dict:
    out = _plain({f.name: getattr(a, f.name) for f in dataclasses.fields(a)
                  if f.name not in ("class_statistics", "per_class", "permutation_test",
                                    "seed_rule", "continuous", "null_check")})
    out["class_statistics"] = (None if a.class_statistics is None else
                               {k: _rounded(v) for k, v in a.class_statistics.items()})
    out["per_class"] = _plain(dataclasses.asdict(a.per_class))
    out["permutation_test"] = dataclasses.asdict(a.permutation_test)
    out["seed_rule"] = dataclasses.asdict(a.seed_rule)
    out["continuous"] = {k: _plain(dataclasses.asdict(v)) for k, v in a.continuous.items()}
    out["null_check"] = (None if a.null_check is None else
                         _plain(dataclasses.asdict(a.null_check)))
    return out


def report_to_json(report: DriftReport) -> dict:
    """What report.json holds."""
    where = report.localisation
    return {
        "schema_version": SCHEMA_VERSION, "drift_jax": provenance(),
        "is_drift": report.is_drift, "p_value": report.p_value,
        "drifted_classes": list(report.drifted_classes),
        "attacks": {k: attack_to_json(a) for k, a in report.attacks.items()},
        "baselines": {k: {**_plain(b.details), "p_value": b.p_value, "is_drift": b.is_drift}
                      for k, b in report.baselines.items()},
        "accuracy": _plain(dataclasses.asdict(report.accuracy)),
        "timings": report.timings, "config": report.config, "class_names": report.class_names,
        "scenario": report.scenario, "environment": report.environment,
        "localisation": {"flagged": list(where.flagged),
                         "partners": {k: dataclasses.asdict(p) for k, p in where.partners.items()},
                         "confusion": _rounded(where.confusion),
                         "confusion_on_base_gray": _rounded(where.confusion_on_base_gray)}}


# ----------------------------------------------------------------------------- from JSON


def _array(value):
    return None if value is None else np.asarray(value, float)


def attack_from_json(a: dict) -> AttackResult:
    per_class = a["per_class"]
    by_statistic = per_class.get("p_value_by_statistic")
    return AttackResult(
        statistic=a["statistic"], base_score=a["base_score"],
        production_score=a["production_score"], control_scores=_array(a["control_scores"]),
        p_value=a["p_value"], statistics=a.get("statistics"),
        class_statistics=(None if a.get("class_statistics") is None else
                          {k: _array(v) for k, v in a["class_statistics"].items()}),
        base_member_fraction=a["base_member_fraction"],
        production_member_fraction=a["production_member_fraction"],
        per_class=PerClass(*(_array(per_class.get(k)) for k in (
            "base", "production", "control_mean", "p_value_rank", "p_value",
            "p_value_corrected")), None if by_statistic is None else
            {k: _array(v) for k, v in by_statistic.items()}),
        permutation_test=TestResult(**a["permutation_test"]),
        seed_rule=SeedRule(**a["seed_rule"]),
        continuous={k: ClassMeans(*(_array(v.get(f)) for f in ("base", "production",
                                                               "control_mean")))
                    for k, v in (a.get("continuous") or {}).items()},
        null_check=_null_check(a.get("null_check")))


def _null_check(raw: dict | None) -> NullCheck | None:
    if raw is None:  # runs without controls, and runs written before the check existed
        return None
    return NullCheck(tuple(raw["statistics"]), raw["production"], _array(raw["controls"]),
                     raw["p_value"], raw["warning"])


def report_from_json(raw: dict) -> DriftReport:
    """report.json (of `SCHEMA_VERSION`) -> `DriftReport` (without gray data or models)."""
    where = raw["localisation"]
    return DriftReport(
        is_drift=raw["is_drift"], p_value=raw["p_value"],
        drifted_classes=list(raw["drifted_classes"]),
        attacks={k: attack_from_json(a) for k, a in raw["attacks"].items()},
        baselines={k: BaselineResult(b["p_value"], b["is_drift"], {
            f: v for f, v in b.items() if f not in ("p_value", "is_drift")})
            for k, b in raw["baselines"].items()},
        accuracy=Accuracy(raw["accuracy"]["base"], raw["accuracy"]["production"],
                          _array(raw["accuracy"]["controls"])),
        timings=raw["timings"], config=raw["config"], class_names=list(raw["class_names"]),
        scenario=raw["scenario"], environment=raw["environment"],
        localisation=Localisation(
            list(where.get("flagged", [])),
            {k: Partner(p["destination"], p.get("direction", "base_reads_production"),
                        p["named"], p["p_values"] if "direction" in p
                        else {"base_reads_production": p["p_values"]})
             for k, p in where.get("partners", {}).items()},
            _array(where.get("confusion")), _array(where.get("confusion_on_base_gray"))))


def _migrate_v1(raw: dict) -> dict:
    """Unversioned reports: the same fields; localisation may be missing (runs written before
    per-class localisation) and partners may hold one direction's flat p-values."""
    return {**raw, "localisation": raw.get("localisation") or {"flagged": [], "partners": {}},
            "schema_version": 2, "drift_jax": {"version": None, "commit": None}}


MIGRATIONS = {1: _migrate_v1}  # version -> a function to the next version


def migrate(raw: dict, where: str) -> dict:
    """An older report.json's dict brought to `SCHEMA_VERSION`, step by step; a newer or
    unknown version is refused."""
    version = raw.get("schema_version", 1)  # version 1 wrote none
    if not isinstance(version, int) or version > SCHEMA_VERSION or \
            (version < SCHEMA_VERSION and version not in MIGRATIONS):
        raise DriftJaxError(f"{where} has schema_version {version!r}; this drift_jax "
                            f"({provenance()['version']}) reads versions 1 to {SCHEMA_VERSION}: "
                            "read it with the drift_jax that wrote it, or run detect again.")
    while version < SCHEMA_VERSION:
        raw = MIGRATIONS[version](raw)
        version = raw["schema_version"]
    return raw


def read_run_report(path: str | Path, fix: str) -> DriftReport:
    """A run folder's report.json as a `DriftReport` (migrated); any problem is one
    `DriftJaxError` naming the file, with ``fix`` as the advice. The run's splits are attached
    when the folder stores them (splits.npz)."""
    path = Path(path)
    raw = migrate(validate.read_json(path / "report.json", None, "run report", fix),
                  str(path / "report.json"))
    problem = validate.schema_problem(raw, REPORT_SCHEMA)
    if problem:
        raise DriftJaxError(f"run report {path / 'report.json'} {problem}; {fix}")
    try:
        report = report_from_json(raw)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DriftJaxError(f"run report {path / 'report.json'} does not have the layout "
                            f"drift_jax writes ({type(e).__name__}: {e}); {fix}") from None
    if (path / "splits.npz").exists():
        report.splits = read_splits(path / "splits.npz", fix)
    return report


def read_splits(path: Path, fix: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {k: stored[k] for k in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DriftJaxError(f"{path} cannot be read ({e}); {fix}") from None


# ----------------------------------------------------------------------------- the folder

# `localise.PARTNER_DIRECTIONS` in words
PARTNER_SENTENCES = {
    "base_reads_production": "class {k}'s production gray data reads as class {j} to the base "
                             "model",
    "production_reads_base": "the production model reads the base model's class {k} gray data as "
                             "class {j}"}


def summary_lines(report: DriftReport) -> list[str]:
    """The verdict a person reads first."""
    cfg = report.config
    verdict = "DRIFT" if report.is_drift else "no drift"
    decided_by = (f"p = {report.p_value:.3f} by {cfg['primary_attack']}, alpha {cfg['alpha']}, "
                  f"{cfg['controls']} control models" if cfg["controls"] else
                  f"uncalibrated: {cfg['primary_attack']} seed rule, no control models")
    lines = [f"verdict: {verdict} ({decided_by})",
             f"scenario: {report.scenario['name']} (severity {report.scenario['severity']})",
             f"classes that moved: {', '.join(report.drifted_classes) or 'none'}"]
    for name, found in report.localisation.partners.items():
        if found.named:
            p = found.p_values[found.direction][found.destination]
            reads = PARTNER_SENTENCES[found.direction].format(k=name, j=found.destination)
            lines.append(f"  {reads} (p = {p:.3f})")
    for name, a in report.attacks.items():
        calibrated = (f", controls {np.mean(a.control_scores):.3f} -> p = {a.p_value:.3f}"
                      if len(a.control_scores) else "")
        lines.append(f"  {name} [{a.statistic}]: base {a.base_score:.3f} (members "
                     f"{a.base_member_fraction:.2f}), production {a.production_score:.3f}"
                     f" (members {a.production_member_fraction:.2f}){calibrated}; "
                     f"permutation p = {a.permutation_test.p_value:.3f}; seed rule "
                     f"{'drift' if a.seed_rule.is_drift else 'no drift'}")
    for name, b in report.baselines.items():
        lines.append(f"  baseline {name}: p = {b.p_value:.3f}")
    check = report.attacks[cfg["primary_attack"]].null_check
    if check is not None and check.warning:
        lines.append(f"warning: {check.warning}")
    return lines


def write_report(report: DriftReport, out: str | Path, overwrite: bool = False) -> Path:
    """The run folder: report.json, config.json, splits.npz, summary.md, gray.npz, models/
    (the base and production models, an orbax stack of two) and figures/, written into a
    temporary sibling that then replaces ``out`` whole (`files.atomic_folder`): a folder with
    report.json is a finished run, replaced only with ``overwrite`` (`files.RunExists`), and a
    failure leaves ``out`` as it was."""
    out = Path(out)
    with atomic_folder(out, overwrite) as tmp:
        _write_run(report, tmp)
    return out


def _write_run(report: DriftReport, out: Path) -> None:
    from drift_jax import figures

    atomic_write_json(out / "config.json", report.config)
    if report.splits is not None:
        buffer = io.BytesIO()
        np.savez(buffer, **report.splits)
        atomic_write_bytes(out / "splits.npz", buffer.getvalue())
    if report.models is not None:
        from drift_jax import stack

        stack.save_stack(out / "models", *report.models, {"members": list(MODEL_MEMBERS)})
    if report.gray is not None:
        report.gray.save(out / "gray.npz")
        figures.gray_grid(out / "figures" / "gray_base_vs_production.png",
                          report.gray.images[:2], report.class_names,
                          ["base model", "production model"], "gray data")
    for name, a in report.attacks.items():
        figures.score_bars(out / "figures" / f"scores_{name}.png", report.class_names,
                           dataclasses.asdict(a.per_class), title=f"{name}: per-class score")
        if not len(a.control_scores):
            continue
        figures.null_distribution(out / "figures" / f"null_{name}.png", list(a.control_scores),
                                  a.production_score, a.base_score,
                                  title=f"{name}: control null, p = {a.p_value:.3f}")
    md = ["# drift_jax detect", "", *[f"- {line.strip()}" for line in summary_lines(report)],
          "", "| stage | seconds |", "|---|---|",
          *[f"| {k} | {v:.1f} |" for k, v in report.timings.items()
            if isinstance(v, float)]]
    atomic_write_bytes(out / "summary.md", ("\n".join(md) + "\n").encode())
    atomic_write_json(out / "report.json", report_to_json(report))
