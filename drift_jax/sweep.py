"""Sweeps: a `DetectConfig` and a grid of config keys -> one run folder per point.

A point's folder is ``OUT/runs/<id>``, ``id`` a hash of its resolved config, holding what
`report.write_report` writes (``report.json`` last, so its presence marks a finished run).
Finished runs are skipped, so a sweep killed at any moment (SIGKILL included) and started again
ends with the results of an uninterrupted one. Points that differ only in ``seed`` run as one
stack (`detect.detect_drift_seeds`); each seed's numbers do not depend on its companions.
Points that differ only in inversion, attack or test settings share one training
(`TrainedCache`): ablations over inversion cost inversions, not trainings.

Tasks (``task_index`` of ``num_tasks``, or SLURM array variables) split the sweep by groups of
seeds; each task writes only its own run folders and `drift-jax report` merges them.

A folder may take several sweeps (more seeds, another grid): ``sweep.json`` lists every sweep
config and every run swept into it, merged under a lock, since `drift-jax report` reads every
run in the folder whichever grid it came from. A sweep that finds itself alone in the folder
(`_Lock`) removes the temporary folders killed sweeps left in ``runs/``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import itertools
import json
import os
import time
from pathlib import Path

from tqdm.auto import tqdm

from drift_jax import config as config_lib
from drift_jax import data as data_lib
from drift_jax import validate
from drift_jax.detect import DetectConfig, detect_drift_seeds
from drift_jax.errors import DriftJaxError
from drift_jax.files import RunExists, atomic_write_json, remove_leftovers
from drift_jax.report import write_report


class TrainedCache(collections.OrderedDict):
    """The trained stacks of the last ``size`` training settings (`detect.cache_key`: every
    config field training depends on, and the seeds): a sweep over inversion, attack or test
    settings trains once per seed group, not per point."""

    def __init__(self, size: int = 4):
        super().__init__()
        self.size = size

    def get(self, key, default=None):
        if key in self:
            self.move_to_end(key)
        return super().get(key, default)

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        while len(self) > self.size:
            self.popitem(last=False)


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """``detect`` is every point's starting config; ``grid`` maps config keys (dotted, as in
    overrides) to the values to sweep; points are the Cartesian product. Keys joined by commas
    move together: ``{"inversion.miface.max_iter,inversion.regularized.steps": [[100, 100],
    [300, 300]]}``."""

    detect: DetectConfig = dataclasses.field(default_factory=DetectConfig)
    grid: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for key, values in self.grid.items():
            if not isinstance(values, list | tuple) or not values:
                raise DriftJaxError(f"sweep grid {key!r}: give a non-empty list of values, "
                                    f"got {values!r}.")
        repeated = _repeated_names(self.grid)
        if repeated:  # one key's values would replace the other's at every point
            raise DriftJaxError(f"the sweep grid sweeps {', '.join(repeated)} under more than one "
                                "key; sweep each config key under one grid key.")


def load(path: str | Path) -> SweepConfig:
    """A sweep JSON ({"detect": {...}, "grid": {...}}) or a plain DetectConfig JSON."""
    raw = config_lib.read_json_object(path)
    if "detect" in raw or "grid" in raw:
        return config_lib.from_dict(SweepConfig, raw)
    return SweepConfig(detect=config_lib.from_dict(DetectConfig, raw))


def parse_grid(items: list[str]) -> dict:
    """``["seed=0,1,2", 'scenario="none","label_swap"']`` -> {key: [values]} (JSON values, else
    strings)."""
    grid = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not text:
            raise DriftJaxError(f"--grid {item!r} must look like key=v1,v2 (e.g. seed=0,1,2).")
        key = key.strip()
        repeated = _repeated_names([*grid, key])
        if repeated:
            raise DriftJaxError(f"--grid gives {', '.join(repeated)} more than once; give one "
                                "--grid per key with all its values (e.g. seed=0,1,2).")
        grid[key] = _grid_values(text)
    return grid


def merge_grids(from_file: dict, from_flags: dict) -> dict:
    """A sweep file's grid and the --grid flags together; a key swept by both is refused (one
    set of values would be dropped)."""
    both = _repeated_names([*from_file, *from_flags])
    if both:
        raise DriftJaxError(f"{', '.join(both)} is swept both by the sweep file's grid and by "
                            "--grid; give its values in one place.")
    return {**from_file, **from_flags}


def check_set_not_swept(overrides: list[str], grid: dict) -> None:
    """A --set key that the grid also sweeps would be replaced at every point: refused."""
    swept = {n for k in grid for n in _grid_names(k)}
    both = sorted({item.partition("=")[0].strip() for item in overrides} & swept)
    if both:
        raise DriftJaxError(f"{', '.join(both)} is both set by --set and swept by the grid, "
                            "which would replace the --set value at every point; give it in "
                            "one place.")


def _grid_names(key: str) -> list[str]:
    """The config keys of a grid key (keys joined by commas move together)."""
    return [name.strip() for name in key.split(",")]


def _repeated_names(grid_keys) -> list[str]:
    """The config keys that more than one of ``grid_keys`` sweeps (or one of them twice)."""
    counts = collections.Counter(n for key in grid_keys for n in _grid_names(key))
    return sorted(name for name, count in counts.items() if count > 1)


def _grid_values(text: str) -> list:
    """``0,1,2`` -> [0, 1, 2]; values that are not JSON stay strings, each on its own, so that
    ``1,two`` gives [1, "two"] and the config names ``two`` as the bad value."""
    try:
        return json.loads(f"[{text}]")
    except json.JSONDecodeError:
        return [_json_or_string(v.strip()) for v in text.split(",")]


def _json_or_string(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def points(sweep: SweepConfig) -> list[DetectConfig]:
    """Every grid point's resolved config, in grid order."""
    keys = list(sweep.grid)
    out = []
    for combo in itertools.product(*(sweep.grid[k] for k in keys)):
        overrides = []
        for key, value in zip(keys, combo):
            names = key.split(",")
            values = value if len(names) > 1 else [value]
            if len(values) != len(names):
                raise DriftJaxError(f"sweep grid {key!r}: each value must list {len(names)} "
                                    f"values (one per key), got {value!r}.")
            overrides += [f"{k.strip()}={json.dumps(v)}" for k, v in zip(names, values)]
        out.append(config_lib.with_overrides(sweep.detect, overrides))
    return out


def run_id(config: DetectConfig) -> str:
    """A stable hash of the resolved config: the run's folder name."""
    text = json.dumps(config_lib.to_dict(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def seed_groups(configs: list[DetectConfig]) -> list[list[DetectConfig]]:
    """Configs equal but for the seed, grouped (in order of first appearance)."""
    groups: dict[str, list[DetectConfig]] = {}
    for cfg in configs:
        groups.setdefault(run_id(dataclasses.replace(cfg, seed=0)), []).append(cfg)
    return list(groups.values())


SLURM_ARRAY_VARIABLES = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX",
                         "SLURM_ARRAY_TASK_COUNT")


def task_from_env(task_index: int | None, num_tasks: int | None) -> tuple[int, int]:
    """Explicit values, else SLURM array variables, else (0, 1)."""
    from_slurm = task_index is None and "SLURM_ARRAY_TASK_ID" in os.environ
    if from_slurm:
        task_index, slurm_tasks = _slurm_array_task()
        num_tasks = slurm_tasks if num_tasks is None else num_tasks
    task_index = 0 if task_index is None else task_index
    num_tasks = 1 if num_tasks is None else num_tasks
    if from_slurm and not 0 <= task_index < num_tasks:
        raise DriftJaxError(f"the SLURM array variables ({_slurm_values()}) give task index "
                            f"{task_index} of {num_tasks} task(s), which is no task; fix or "
                            "unset them, or pass --task-index and --num-tasks.")
    if num_tasks < 1:
        raise DriftJaxError(f"--num-tasks must be >= 1, got {num_tasks}.")
    if not 0 <= task_index < num_tasks:
        raise DriftJaxError(f"task index {task_index} is outside 0..{num_tasks - 1}; "
                            "--task-index counts from 0 and must be below --num-tasks.")
    return task_index, num_tasks


def _slurm_array_task() -> tuple[int, int | None]:
    """This task's index and the number of tasks from the SLURM array variables (the index
    counts from SLURM_ARRAY_TASK_MIN, 0 when unset); malformed or incomplete ones are named."""
    low = _slurm_int("SLURM_ARRAY_TASK_MIN", 0)
    index = _slurm_int("SLURM_ARRAY_TASK_ID") - low
    if "SLURM_ARRAY_TASK_COUNT" in os.environ:
        return index, _slurm_int("SLURM_ARRAY_TASK_COUNT")
    if "SLURM_ARRAY_TASK_MAX" in os.environ:
        return index, _slurm_int("SLURM_ARRAY_TASK_MAX") - low + 1
    raise DriftJaxError("SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor "
                        "SLURM_ARRAY_TASK_MAX is, so the number of tasks is unknown; pass "
                        "--num-tasks, or unset SLURM_ARRAY_TASK_ID outside an array job.")


def _slurm_int(name: str, default: int | None = None) -> int:
    """A SLURM array variable as an integer; a malformed one is named."""
    text = os.environ.get(name)
    if text is None and default is not None:
        return default
    try:
        return int(text)
    except (TypeError, ValueError):
        raise DriftJaxError(f"the environment variable {name}={text!r} is not an integer; fix "
                            "or unset it, or pass --task-index and --num-tasks.") from None


def _slurm_values() -> str:
    return ", ".join(f"{name}={os.environ[name]}" for name in SLURM_ARRAY_VARIABLES
                     if name in os.environ)


def task_share(groups: list, task_index: int, num_tasks: int) -> list:
    """Round-robin: every group belongs to exactly one task."""
    return [g for i, g in enumerate(groups) if i % num_tasks == task_index]


def is_finished(run_dir: Path) -> bool:
    return (run_dir / "report.json").exists()


def _check_before_writing(configs: list[DetectConfig], out: Path) -> None:
    """Everything a sweep can refuse, refused before it writes anything: repeated points, and
    an --out that is a file, a folder of something else, or one that holds, is or lies inside
    data or a checkpoint a point reads."""
    counts = collections.Counter(run_id(c) for c in configs)
    if max(counts.values(), default=1) > 1:
        repeated = next(c for c in configs if counts[run_id(c)] > 1)
        raise DriftJaxError(f"the sweep grid gives the same point more than once (e.g. seed "
                            f"{repeated.seed}); list each value once.")
    if out.exists() and not out.is_dir():
        raise DriftJaxError(f"--out {out} is a file, not a folder; choose a folder path.")
    validate.check_apart(out, [i for c in configs for i in validate.config_inputs(c)])
    ours = {LOCK_FILE}  # made first, so a sweep killed at once leaves it alone in the folder
    if out.is_dir() and any(p.name not in ours for p in out.iterdir()) and \
            not (out / "sweep.json").exists():
        raise DriftJaxError(f"--out {out} is a folder of other files, not a sweep; choose a new "
                            "or empty folder (or this sweep's own folder, to resume it).")
    validate.writable(out)


def run_sweep(sweep: SweepConfig, out: str | Path, task_index: int | None = None,
              num_tasks: int | None = None, progress: bool = True) -> dict:
    """Runs this task's unfinished points; returns {"ran": [...ids], "skipped": [...],
    "other_tasks": n, "seconds": s}."""
    out = validate.resolved(out)
    task_index, num_tasks = task_from_env(task_index, num_tasks)
    configs = points(sweep)
    _check_before_writing(configs, out)
    out.mkdir(parents=True, exist_ok=True)
    with _Lock(out) as lock:
        with lock.listing():
            _record_listing(out, sweep, configs)
            lock.start_work(on_alone=lambda: remove_leftovers(out / "runs"))
        return _run_points(configs, out, task_index, num_tasks, progress)


def _run_points(configs: list[DetectConfig], out: Path, task_index: int, num_tasks: int,
                progress: bool) -> dict:
    groups = seed_groups(configs)
    mine = task_share(groups, task_index, num_tasks)
    ran, skipped, datasets, cache = [], [], {}, TrainedCache()
    start = time.perf_counter()
    bar = tqdm(mine, desc=f"sweep task {task_index}/{num_tasks}", unit="group",
               disable=not progress)
    for group in bar:
        todo = [c for c in group if not is_finished(out / "runs" / run_id(c))]
        skipped += [run_id(c) for c in group if c not in todo]
        if not todo:
            continue
        spec = todo[0].base
        if spec not in datasets:
            datasets[spec] = data_lib.load(spec)
        reports = detect_drift_seeds(todo[0], [c.seed for c in todo], base=datasets[spec],
                                     progress=progress, cache=cache)
        for cfg, report in zip(todo, reports):
            try:
                write_report(report, out / "runs" / run_id(cfg))
            except RunExists:  # another sweep finished this point meanwhile: the same result
                skipped.append(run_id(cfg))
                continue
            ran.append(run_id(cfg))
    return {"ran": ran, "skipped": skipped,
            "other_tasks": len(groups) - len(mine), "seconds": time.perf_counter() - start}


LISTING_FIX = ("restore the file (it lists the folder's sweeps and runs) or sweep into a new "
               "--out.")


def _record_listing(out: Path, sweep: SweepConfig, configs: list[DetectConfig]) -> None:
    """Adds this sweep's config and runs to ``sweep.json``, keeping those of earlier sweeps
    into the folder (a listing of one sweep only would lose the runs of the others)."""
    path = out / "sweep.json"
    sweeps, runs = [], {}
    if path.exists():
        earlier = validate.read_json(path, None, "sweep listing", LISTING_FIX)
        # before "sweeps": one sweep, under "sweep"
        sweeps = earlier.get("sweeps", [earlier["sweep"]] if "sweep" in earlier else [])
        runs = earlier.get("runs", {})
        if not isinstance(sweeps, list) or not isinstance(runs, dict):
            raise DriftJaxError(f"sweep listing {path} has no list of sweeps and object of "
                                f"runs; {LISTING_FIX}")
    this = json.loads(json.dumps(config_lib.to_dict(sweep)))  # as read back: lists, not tuples
    if this not in sweeps:
        sweeps.append(this)
    runs.update({run_id(c): config_lib.to_dict(c) for c in configs})
    atomic_write_json(path, {"sweeps": sweeps, "runs": runs})


LOCK_FILE = ".sweep.lock"
_LISTING_BYTE, _AT_WORK_BYTE = 0, 1


class _Lock:
    """Two byte-range locks on ``OUT/.sweep.lock`` (POSIX locks: the kernel, or the NFS lock
    manager, releases them when a process dies, SIGKILL included). Byte 0 guards sweep.json's
    read-merge-write. Byte 1 is held shared by every sweep at work in the folder for as long as
    it runs, so one that can take it exclusively is alone there, and any temporary folder in
    runs/ is a killed sweep's. Where the filesystem has no locks, the listing is merged unlocked
    and nothing is removed (being alone cannot be known)."""

    def __init__(self, out: Path):
        self.path = out / LOCK_FILE

    def __enter__(self) -> _Lock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # releases both

    def _take(self, kind: int, byte: int) -> bool:
        """True once taken; False if another process holds it (only asked without waiting) or
        the filesystem has no locks."""
        try:
            fcntl.lockf(self.fd, kind, 1, byte)
            return True
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EAGAIN, errno.ENOLCK, errno.EOPNOTSUPP,
                           errno.EINVAL):
                return False
            raise

    @contextlib.contextmanager
    def listing(self):
        self._take(fcntl.LOCK_EX, _LISTING_BYTE)
        try:
            yield
        finally:
            self._take(fcntl.LOCK_UN, _LISTING_BYTE)

    def start_work(self, on_alone) -> None:
        """Calls ``on_alone`` if no other sweep is at work here, then joins the sweeps at work
        (under the listing lock, so that no sweep starts between the two)."""
        if self._take(fcntl.LOCK_EX | fcntl.LOCK_NB, _AT_WORK_BYTE):
            on_alone()
        self._take(fcntl.LOCK_SH, _AT_WORK_BYTE)
