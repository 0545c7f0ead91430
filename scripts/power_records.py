"""Power benchmark records: written once, never rewritten; everything else is derived from them.

A run of `scripts/bench_detection.py` appends one record per seed, one JSON object per line, to
``benchmarks/records/<name>.jsonl`` (`append_record`: an fsync'd ``O_APPEND`` write of the whole
line under a file lock). A record states the rule that decided it as data (the statistic, an
omnibus's parts written out, the combination, the number of controls, alpha), never as a name
whose meaning lives in code. `read_records` reads the complete lines and reports, never reads,
a line a killed writer left incomplete or corrupt. A record (``SCHEMA_VERSION`` 1)::

    {"schema_version": 1, "benchmark": "power", "written": "2026-12-02T10:00:00Z",
     "environment": {"processor": ..., "backend": ..., "device_kind": ..., "jax": ...},
     "code": {"commit": "..."},
     "point": {"dataset": "digits", "variant": "m49_s16", "scenario": "relabel",
               "severity": 2, "seed": 3},
     "config": {...the whole DetectConfig...},
     "decision": {"attack": "rule_based", "stat": "omnibus",
                  "parts": [["mean", "class_mean"], ["auc", "two_largest_deficits"], ...],
                  "combination": "min_rank", "controls": 49, "alpha": 0.05,
                  "statistic": "rule_based:omnibus[mean,auc,...]/min_rank",
                  "p_value": 0.02, "drift": true},
     "localisation": {"statistics": ["mean", ...], "correction": "holm", "alpha": 0.05},
     "definitions": {"omnibus[mean,auc,...]": [["mean", "class_mean"], ...]},
     "p_values": {"rule_based:mean/class_mean": 0.3, "model:reverse/two_largest_deficits": 0.02,
                  "rule_based:omnibus[mean,auc,...]/min_rank": 0.02, "baseline:mmd": 1.0, ...},
     "classes": {...}, "named": [...], "changed": [...], "partners": {...}, "accuracy": 0.97,
     "seconds": 12.0, "timings": {...},
     "class_statistics_attack": "rule_based", "class_statistics": {"mean": [[...]], ...}}

Every statistic has one name (`canonical_p_values`): an omnibus is named by its parts (a short
name only for the parts `OMNIBUS_NAMES` defines, else every part spelled out), and the models'
own statistics, the same for every attack, are stored once as ``model:<stat>/<combination>``.

The power files committed before records existed (``benchmarks/power*.json``) stay as they are:
`read_legacy` reads them as records in memory, each one's deciding rule taken from the frozen
tables below (`LEGACY_OMNIBUS`, `LEGACY_DECISIONS`), and the p-values an earlier migration had
computed offline and written into them dropped (derivation recomputes them: `with_derived`).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import fcntl
import json
import math
import os
import re
import subprocess
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
RECORDS_DIR = BENCHMARKS / "records"
SCHEMA_VERSION = 1

# scenario name -> (DetectConfig scenario, scenario_params, the classes it changes)
SCENARIOS = {
    "relabel": ("relabel", {}, {0, 1}),
    "label_swap": ("label_swap", {}, {0, 1}),
    "class_transform:rotate": ("class_transform", {"kind": "rotate"}, {0}),
    "class_transform:invert": ("class_transform", {"kind": "invert"}, {0}),
    "label_noise": ("label_noise", {}, None),
    "prior_shift": ("prior_shift", {}, {0, 1}),
}

# The omnibus definitions that have short names, written out in full. Any other omnibus is
# named by its parts (`omnibus_name`), so one name never means two statistics.
OMNIBUS_NAMES = {
    "omnibus[mean,auc]": (("mean", "class_mean"), ("auc", "two_largest_deficits")),
    "omnibus[mean,auc,logit_mean]": (("mean", "class_mean"), ("auc", "two_largest_deficits"),
                                     ("logit_mean", "largest_deficit")),
    "omnibus[mean,auc,logit_mean,self_confidence,reverse]": (
        ("mean", "class_mean"), ("auc", "two_largest_deficits"),
        ("logit_mean", "largest_deficit"), ("self_confidence", "class_mean"),
        ("reverse", "two_largest_deficits")),
}

# What each omnibus name in the committed power files means, written out in full (frozen: the
# files are history, whatever `drift_jax.detect.OMNIBUS` becomes). In those files a bare
# "omnibus" and "omnibus[+self_confidence,reverse]" both name the five-part omnibus; every
# stored value agrees with its definition recomputed from the stored per-class statistics.
LEGACY_OMNIBUS = {
    "omnibus[mean,auc]": (("mean", "class_mean"), ("auc", "two_largest_deficits")),
    "omnibus[mean,auc,logit_mean]": (("mean", "class_mean"), ("auc", "two_largest_deficits"),
                                     ("logit_mean", "largest_deficit")),
    "omnibus[+self_confidence,reverse]": (
        ("mean", "class_mean"), ("auc", "two_largest_deficits"),
        ("logit_mean", "largest_deficit"), ("self_confidence", "class_mean"),
        ("reverse", "two_largest_deficits")),
    "omnibus": (
        ("mean", "class_mean"), ("auc", "two_largest_deficits"),
        ("logit_mean", "largest_deficit"), ("self_confidence", "class_mean"),
        ("reverse", "two_largest_deficits")),
}
# The rule that decided a committed run, by the run's ``decided_by`` (None: the run did not say).
LEGACY_DECISIONS = {
    "rule_based:omnibus[mean,auc]/min_rank": {
        "attack": "rule_based", "stat": "omnibus", "combination": "min_rank",
        "parts": [["mean", "class_mean"], ["auc", "two_largest_deficits"]]},
    "rule_based:omnibus[mean,auc,logit_mean]/min_rank": {
        "attack": "rule_based", "stat": "omnibus", "combination": "min_rank",
        "parts": [["mean", "class_mean"], ["auc", "two_largest_deficits"],
                  ["logit_mean", "largest_deficit"]]},
    "rule_based:omnibus[+self_confidence,reverse]/min_rank": {
        "attack": "rule_based", "stat": "omnibus", "combination": "min_rank",
        "parts": [["mean", "class_mean"], ["auc", "two_largest_deficits"],
                  ["logit_mean", "largest_deficit"], ["self_confidence", "class_mean"],
                  ["reverse", "two_largest_deficits"]]},
    "rule_based:omnibus/min_rank": {
        "attack": "rule_based", "stat": "omnibus", "combination": "min_rank",
        "parts": [["mean", "class_mean"], ["auc", "two_largest_deficits"],
                  ["logit_mean", "largest_deficit"], ["self_confidence", "class_mean"],
                  ["reverse", "two_largest_deficits"]]},
    # the digits M = 19 grid (benchmarks/power.json) predates the omnibus and did not record its
    # decision: the detector's default then, the member fraction averaged over classes
    None: {"attack": "rule_based", "stat": "fraction", "combination": "class_mean",
           "note": "not recorded by the run: the detector's default before the omnibus "
                   "(stat='fraction', combine='auto')"},
}
# the controls of each variant in the committed files (the runs without per-class statistics
# do not show them)
LEGACY_VARIANT_CONTROLS = {"m19": 19, "m49": 49, "m49_s16": 49, "m19_3a": 19, "m49_3a": 49,
                           "m19_s16_3a": 19, "m19_3a_pooled": 19, "m19_3a_strat": 19}
# the models' own per-class statistics (the same for every attack) in the committed files
LEGACY_MODEL_STATISTICS = ("self_confidence", "reverse")
# fields of a committed run that are not evidence: an earlier migration's stamp of the omnibus
# of its day on every run, and the names the migration gave (replaced by ``decision``)
_LEGACY_DROPPED = ("omnibus_parts", "decided_by", "recomputed_offline", "p_values", "seed")

# the classes-flagging rules evaluated offline (`flagged`), by their per-class statistics
LOCALISATION_RULES = {"mean": ("mean",),
                      "mean,self_confidence,reverse": ("mean", "self_confidence", "reverse")}


class RecordWarning(UserWarning):
    """A line of a records file that is not a record (a killed writer's torn line)."""


# ---------------------------------------------------------------------------------------- names

def _parts(parts: Iterable) -> tuple[tuple[str, str], ...]:
    return tuple((str(s), str(c)) for s, c in parts)


def omnibus_name(parts: Iterable) -> str:
    """The one name of the omnibus of ``parts`` ((statistic, combination) pairs): its short name
    in `OMNIBUS_NAMES`, else every part spelled out, ``omnibus[mean/class_mean,...]``."""
    parts = _parts(parts)
    for name, known in OMNIBUS_NAMES.items():
        if known == parts:
            return name
    return "omnibus[" + ",".join(f"{s}/{c}" for s, c in parts) + "]"


def point_key(point: dict) -> str:
    """``dataset[variant]/scenario/severity``: the rows of the report."""
    return f"{point['dataset']}[{point['variant']}]/{point['scenario']}/{point['severity']}"


def parse_point_key(key: str) -> dict:
    match = re.fullmatch(r"([^\[/]+)\[([^\]]+)\]/([^/]+)/(\d+)", key)
    if not match:
        raise ValueError(f"not a point key (dataset[variant]/scenario/severity): {key!r}")
    dataset, variant, scenario, severity = match.groups()
    return {"dataset": dataset, "variant": variant, "scenario": scenario,
            "severity": int(severity)}


def _same(values: list[float]) -> bool:
    first = values[0]
    return all(v == first or (isinstance(v, float) and isinstance(first, float)
                              and math.isnan(v) and math.isnan(first)) for v in values)


def canonical_p_values(p_values: dict[str, float], omnibus_parts: Callable[[str, str], Iterable],
                       model_statistics: Iterable[str]) -> tuple[dict[str, float], dict]:
    """``{"attack:stat/combination": p, "baseline:name": p}`` -> (the same p-values, one name per
    statistic; ``{omnibus name: parts}``). ``omnibus_parts(attack, stat)`` gives the parts of an
    omnibus ``stat``; ``model_statistics`` (the same for every attack) go under ``model:``, once
    (kept per attack if the attacks disagree). Two names of one statistic must agree."""
    model_statistics = set(model_statistics)
    groups: dict[str, list[tuple[str, float]]] = {}
    definitions: dict[str, list[list[str]]] = {}
    for key, p in p_values.items():
        owner, _, rest = key.partition(":")
        stat, _, combination = rest.partition("/")
        new = key
        if owner != "baseline" and stat.startswith("omnibus"):
            parts = _parts(omnibus_parts(owner, stat))
            name = omnibus_name(parts)
            if definitions.setdefault(name, [list(q) for q in parts]) != [list(q) for q in parts]:
                raise ValueError(f"{name} stands for two omnibus definitions")
            new = f"{owner}:{name}/{combination}"
        elif owner != "baseline" and stat in model_statistics:
            new = f"model:{stat}/{combination}"
        groups.setdefault(new, []).append((key, p))
    out = {}
    for new, items in groups.items():
        values = [p for _, p in items]
        if _same(values):
            out[new] = values[0]
        elif new.startswith("model:"):  # the attacks disagree: not one statistic after all
            out.update(items)
        else:
            raise ValueError(f"{', '.join(k for k, _ in items)} name one statistic ({new}) "
                             f"with different values {values}")
    return out, definitions


def describe_rule(decision: dict) -> str:
    """A rule as one line: ``rule_based:omnibus[mean,auc]/min_rank, M = 19, alpha 0.05``."""
    stat = omnibus_name(decision["parts"]) if decision["stat"] == "omnibus" else decision["stat"]
    return (f"{decision['attack']}:{stat}/{decision['combination']}, "
            f"M = {decision['controls']}, alpha {decision['alpha']}")


# -------------------------------------------------------------------------------------- writing

def _json_default(obj):
    if isinstance(obj, np.ndarray | np.generic) or hasattr(obj, "__array__"):
        return np.asarray(obj).tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


_RULE_FIELDS = ("attack", "stat", "combination", "controls", "alpha")


def check_record(record: dict) -> None:
    """Raises ValueError unless ``record`` has what every record needs: the schema version, the
    environment, the point and the deciding rule as data."""
    if record.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"a record needs schema_version {SCHEMA_VERSION}")
    if not isinstance(record.get("environment"), dict):
        raise ValueError("a record needs its environment")
    point = record.get("point") or {}
    missing = {"dataset", "variant", "scenario", "severity", "seed"} - set(point)
    if missing:
        raise ValueError(f"a record's point lacks {sorted(missing)}")
    decision = record.get("decision") or {}
    missing = set(_RULE_FIELDS) - set(decision)
    if missing:
        raise ValueError(f"a record's decision lacks {sorted(missing)}")
    if decision["stat"] == "omnibus" and not decision.get("parts"):
        raise ValueError("an omnibus decision needs its parts")


def append_record(path: str | os.PathLike, record: dict) -> Path:
    """Appends ``record`` as one line of ``path``, durably: the whole line in one ``O_APPEND``
    write under an exclusive lock, then fsync (and the folder's, for a new file). A writer killed
    mid-line leaves a line without its newline, which `read_records` reports and skips; the next
    record starts on a line of its own. Nothing already in the file is changed."""
    check_record(record)
    path = Path(path)
    line = (json.dumps(record, separators=(",", ":"), default=_json_default) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # after a torn line: keep it apart (the reader reports it)
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock
    if created:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def code_version() -> dict:
    """The commit the benchmark ran from (None outside a git checkout)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0:
            return {"commit": out.stdout.strip()}
    return {"commit": None}


# -------------------------------------------------------------------------------------- reading

def _report(problems: list[str] | None, message: str) -> None:
    warnings.warn(message, RecordWarning, stacklevel=3)
    if problems is not None:
        problems.append(message)


def read_records(path: str | os.PathLike, problems: list[str] | None = None) -> list[dict]:
    """The records of a records file, in the order written. A line that is not a complete
    record (no newline: a writer killed mid-line; not JSON; another schema) is skipped and
    reported: a `RecordWarning` and, with ``problems``, a message appended to it."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    records = []
    for number, raw in enumerate(lines, 1):
        if number == len(lines):  # after the last newline
            if raw:
                _report(problems, f"{path}:{number}: incomplete last line ({len(raw)} bytes, no "
                                  "newline: a writer killed mid-record): not read")
            break
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            _report(problems, f"{path}:{number}: not a JSON record (a torn write?): not read")
            continue
        if not isinstance(record, dict) or record.get("schema_version") != SCHEMA_VERSION:
            version = record.get("schema_version") if isinstance(record, dict) else None
            _report(problems, f"{path}:{number}: schema_version {version!r}, this reader reads "
                              f"{SCHEMA_VERSION}: not read")
            continue
        records.append(record)
    return records


def seeds_done(path: str | os.PathLike, point: dict) -> set[int]:
    """The seeds the records file ``path`` holds for ``point`` (dataset, variant, scenario,
    severity): what a resumed benchmark need not run again."""
    keys = ("dataset", "variant", "scenario", "severity")
    return {r["point"]["seed"] for r in read_records(path)
            if all(r["point"].get(k) == point[k] for k in keys)}


def _legacy_decision(run: dict, alpha: float, controls: int, p_values: dict) -> dict:
    name = run.get("decided_by")
    if name is None and any(":omnibus" in k for k in run["p_values"]):
        raise ValueError("a committed run with an omnibus but no decided_by: no frozen rule")
    if name not in LEGACY_DECISIONS:
        raise ValueError(f"no frozen rule for decided_by {name!r}")
    rule = copy.deepcopy(LEGACY_DECISIONS[name])
    rule |= {"controls": controls, "alpha": alpha}
    stat = omnibus_name(rule["parts"]) if rule["stat"] == "omnibus" else rule["stat"]
    rule["statistic"] = f"{rule['attack']}:{stat}/{rule['combination']}"
    rule["p_value"] = p_values.get(rule["statistic"])
    rule["drift"] = rule["p_value"] is not None and rule["p_value"] <= alpha
    return rule


def read_legacy(path: str | os.PathLike) -> list[dict]:
    """A committed power file (``benchmarks/power*.json``, written before records existed) as
    records, in memory: the deciding rule from `LEGACY_DECISIONS`, every omnibus named by its
    parts (`LEGACY_OMNIBUS`), the p-values an earlier migration computed offline dropped
    (`with_derived` recomputes them from the per-class statistics) and the provenance in
    ``legacy``. The file is only read."""
    path = Path(path)
    saved = json.loads(path.read_bytes())
    alpha = saved["alpha"]
    try:
        shown = str(path.resolve().relative_to(ROOT))
    except ValueError:
        shown = str(path)
    records = []
    for key, runs in saved["points"].items():
        point = parse_point_key(key)
        for index, run in enumerate(runs):
            measured = {k: v for k, v in run["p_values"].items()
                        if k not in set(run.get("recomputed_offline", ()))}
            p_values, definitions = canonical_p_values(
                measured, lambda _, stat: LEGACY_OMNIBUS[stat], LEGACY_MODEL_STATISTICS)
            controls = LEGACY_VARIANT_CONTROLS[point["variant"]]
            if run.get("class_statistics") and \
                    len(run["class_statistics"]["mean"]) - 2 != controls:
                raise ValueError(f"{path} {key}: the per-class statistics disagree with "
                                 f"M = {controls}")
            decision = _legacy_decision(run, alpha, controls, p_values)
            record = {"schema_version": SCHEMA_VERSION, "benchmark": "power",
                      "legacy": {"file": shown, "key": key, "index": index,
                                 "recomputed_offline_dropped": sorted(
                                     run.get("recomputed_offline", ()))},
                      "environment": saved["machine"], "point": {**point, "seed": run["seed"]},
                      "decision": decision, "definitions": definitions, "p_values": p_values,
                      **{k: v for k, v in run.items() if k not in _LEGACY_DROPPED}}
            if run.get("class_statistics"):
                record["class_statistics_attack"] = "rule_based"
            records.append(record)
    return records


# the power files committed before records existed: history, read as they are
LEGACY_FILES = ("power.json", "power_cifar10_cpu.json", "power_cifar10_gpu.json",
                "power_m49.json", "power_m49_s16.json", "power_m49_s16_sev13.json",
                "power_mnist.json", "power_mnist_m19_s16.json", "power_mnist_m49.json",
                "power_mnist_pooled.json", "power_mnist_strat.json")


def legacy_files(folder: Path = BENCHMARKS) -> list[Path]:
    return [folder / name for name in LEGACY_FILES if (folder / name).exists()]


def record_files(folder: Path = RECORDS_DIR) -> list[Path]:
    return sorted(folder.glob("*.jsonl"))


def load_file(path: str | os.PathLike, problems: list[str] | None = None) -> list[dict]:
    """Records from a records file (``.jsonl``) or a committed power file (``.json``)."""
    path = Path(path)
    return read_records(path, problems) if path.suffix == ".jsonl" else read_legacy(path)


def load_points(paths: Iterable[str | os.PathLike] | None = None, derive: bool = True,
                problems: list[str] | None = None) -> dict[str, list[dict]]:
    """{point key: records, by seed} from ``paths`` (default: the committed power files, then
    every records file). A seed recorded twice is taken from the later record (records files
    after the committed files, later lines after earlier ones). With ``derive``, each record
    comes with the statistics derivable from its per-class statistics (`with_derived`): new
    dicts, the files are only read."""
    if paths is None:
        paths = [*legacy_files(), *record_files()]
    points: dict[str, dict[int, dict]] = {}
    for path in paths:
        for record in load_file(path, problems):
            points.setdefault(point_key(record["point"]), {})[record["point"]["seed"]] = record
    return {key: [with_derived(r) if derive else r for _, r in sorted(by_seed.items())]
            for key, by_seed in points.items()}


# ----------------------------------------------------------------- statistics from stored ones

def per_class(record: dict) -> dict[str, np.ndarray]:
    """A record's stored per-class statistics {stat: [G, C]} (G: base, production, controls);
    the logit mean, for runs from before it existed, from the mean."""
    from drift_jax import stats

    out = {k: np.asarray(v, float) for k, v in record["class_statistics"].items()}
    out.setdefault("logit_mean", stats.clipped_logit(out["mean"]))
    return out


def omnibus_score(statistics: dict[str, np.ndarray], parts: Iterable, *more: np.ndarray):
    """The omnibus of ``parts`` (and any ``more`` scores [G]) on per-class statistics [G, C]:
    one score per model [G], lower = drift (`stats.min_rank`)."""
    from drift_jax import stats

    models = np.arange(1, next(iter(statistics.values())).shape[0])
    return stats.min_rank(np.stack([*(stats.combine_classes(statistics[s], models, c)
                                      for s, c in parts), *more]), models)


def rank_p_value(score: np.ndarray) -> float:
    """The production model's (model 1) rank p-value among the controls (models 2...)."""
    from drift_jax import stats

    return float(stats.calibrated_p_value(score[2:], score[1]))


def derived_p_values(record: dict) -> dict[str, float]:
    """From a record's stored per-class statistics, the p-values of its attack's statistics
    that it lacks: every combination of the logit mean and every omnibus of `OMNIBUS_NAMES` whose
    statistics are stored."""
    from drift_jax import stats

    if not record.get("class_statistics"):
        return {}
    attack = record.get("class_statistics_attack", record["decision"]["attack"])
    values = per_class(record)
    models = np.arange(1, values["mean"].shape[0])
    wanted: dict[str, Callable[[], np.ndarray]] = {
        f"{attack}:logit_mean/{c}": (lambda c=c: stats.combine_classes(
            values["logit_mean"], models, c)) for c in stats.COMBINATIONS}
    for name, parts in OMNIBUS_NAMES.items():
        if all(s in values for s, _ in parts):
            wanted[f"{attack}:{name}/min_rank"] = lambda parts=parts: omnibus_score(values,
                                                                                    parts)
    return {k: rank_p_value(score()) for k, score in wanted.items()
            if k not in record["p_values"]}


def with_derived(record: dict) -> dict:
    """A copy of ``record`` whose p-values include `derived_p_values`, listed in ``derived``
    (the record itself is not changed)."""
    derived = derived_p_values(record)
    if not derived:
        return record
    return {**record, "p_values": {**record["p_values"], **derived},
            "derived": sorted(derived)}


def candidate_scores(record: dict) -> dict[str, np.ndarray]:
    """Candidate decision statistics of one record's models: {candidate: score per model [G]},
    lower = drift. Every omnibus of `OMNIBUS_NAMES` and of the record's own definitions whose
    statistics are stored, the logit mean's largest deficit and, with the base model's answers
    on every model's gray data (``confusion``), statistics of those answers."""
    from drift_jax import stats

    values = per_class(record)
    models = np.arange(1, values["mean"].shape[0])
    omnibuses = {**OMNIBUS_NAMES, **{k: _parts(v) for k, v in
                                     record.get("definitions", {}).items()}}
    out = {name: omnibus_score(values, parts) for name, parts in omnibuses.items()
           if all(s in values for s, _ in parts)}
    out["logit_mean/largest_deficit"] = stats.combine_classes(values["logit_mean"], models,
                                                              "largest_deficit")
    if record.get("confusion"):
        confusion = stats.clipped_logit(np.asarray(record["confusion"]))  # [G, C, C]
        off_target = ~np.eye(confusion.shape[-1], dtype=bool)
        # every (class k, other class j): the base model's probability of j on k's gray data; a
        # relabel a -> b raises (b, a) in the production model only
        pairs = -confusion[:, off_target]  # [G, C (C - 1)]
        # per class: its most probable other class
        peak = -np.where(off_target, confusion, -np.inf).max(-1)  # [G, C]
        pair_two = stats.combine_classes(pairs, models, "two_largest_deficits")
        out |= {"confusion pairs / largest_deficit": stats.combine_classes(
                    pairs, models, "largest_deficit"),
                "confusion pairs / two_largest_deficits": pair_two,
                "confusion peak / two_largest_deficits": stats.combine_classes(
                    peak, models, "two_largest_deficits"),
                "omnibus[mean,auc,logit_mean] + confusion pairs / two_largest_deficits":
                    omnibus_score(values, OMNIBUS_NAMES["omnibus[mean,auc,logit_mean]"],
                                  pair_two)}
    return out


def candidate_p_values(record: dict) -> dict[str, float]:
    """Each candidate's rank p-value of the production model among the controls."""
    return {name: rank_p_value(score) for name, score in candidate_scores(record).items()}


def flagged(record: dict, names: Iterable[str], production: int = 1,
            alpha: float | None = None) -> set[int]:
    """The classes a record's stored statistics flag (`drift_jax.detect.class_p_values`, Holm)
    with model ``production`` as the production model and every other model but the base as
    controls."""
    from drift_jax.detect import class_p_values

    alpha = record["decision"]["alpha"] if alpha is None else alpha
    values = per_class(record)
    order = [0, production, *(m for m in range(1, len(values["mean"])) if m != production)]
    _, corrected = class_p_values({k: v[None, order] for k, v in values.items()}, list(names),
                                  np.arange(2, len(order)))
    return set(np.flatnonzero(corrected[0] <= alpha).tolist())
