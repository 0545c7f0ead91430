"""One validation layer, run before any work: numbers of every config (finite, in the bounds each
field states), output folders (writable, not a file, never a finished run unless overwriting is
asked for) and memory (an estimate from shapes against what the host and device have free).

Config classes declare bounds on their fields with `bounded` and call `check_fields` in
``__post_init__``; `config.from_dict` names the failing key with its full dotted path.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

from drift_jax.errors import DriftJaxError

# Files whose presence marks a finished run of each command (written last, atomically).
FINISHED_MARKERS = ("report.json", "metrics.json", "summary.json", "summary.md")


class ConfigValueError(DriftJaxError):
    """A config field out of its bounds; ``field`` is its name within its config."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field} {message}")
        self.field, self.message = field, message


def bounded(default=dataclasses.MISSING, *, ge=None, gt=None, le=None, lt=None,
            even: bool = False):
    """A dataclass field with bounds that `check_fields` enforces."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return dataclasses.field(default=default, metadata={"bounds": bounds, "even": even})


_WORDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_TESTS = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b, "le": lambda v, b: v <= b,
          "lt": lambda v, b: v < b}


def check_fields(config) -> None:
    """Every number of a config dataclass is finite and inside its field's bounds."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not math.isfinite(value):
            raise ConfigValueError(f.name, f"must be a finite number, got {value}.")
        bounds = f.metadata.get("bounds", {})
        failed = [k for k, b in bounds.items() if not _TESTS[k](value, b)]
        if failed:
            need = " and ".join(f"{_WORDS[k]} {bounds[k]}" for k in bounds)
            raise ConfigValueError(f.name, f"must be {need}, got {value}.")
        if f.metadata.get("even") and value % 2:
            raise ConfigValueError(f.name, f"must be an even number, got {value}.")


# ----------------------------------------------------------------------------- files we read


def read_json(path: str | os.PathLike, schema: dict | None, what: str, fix: str,
              optional: tuple[str, ...] = ()) -> dict:
    """A JSON object file, checked: it exists, is valid JSON and an object, and (with a
    ``schema`` {key: type or tuple of types}) has exactly those keys (``optional`` ones may be
    missing), each of its type. Any problem is one error naming the file, the problem and
    ``fix``."""
    import json

    path = Path(path)

    def fail(problem: str):
        raise DriftJaxError(f"{what} {path} {problem}; {fix}")

    try:
        data = json.loads(path.read_text(), object_pairs_hook=_object_with_unique_keys)
    except FileNotFoundError:
        fail("does not exist")
    except RepeatedKeyError as e:
        fail(f"gives the key {e.key!r} more than once (JSON would keep only the last value)")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        fail(f"is unreadable or not valid JSON ({e})")
    if not isinstance(data, dict):
        fail(f"holds a JSON {type(data).__name__}, not an object {{...}}")
    if schema is None:
        return data
    problem = schema_problem(data, schema, optional)
    if problem:
        fail(problem)
    return data


class RepeatedKeyError(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _object_with_unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys are all different: a repeated key is a value that would be
    silently dropped."""
    data = {}
    for key, value in pairs:
        if key in data:
            raise RepeatedKeyError(key)
        data[key] = value
    return data


def schema_problem(data: dict, schema: dict, optional: tuple[str, ...] = ()) -> str | None:
    """What keeps ``data`` from ``schema`` ({key: type or tuple of types}; exactly those keys,
    ``optional`` ones may be missing), as a phrase for an error message, or None."""
    missing = [k for k in schema if k not in data and k not in optional]
    extra = [k for k in data if k not in schema]
    problems = ([f"missing keys {', '.join(missing)}"] if missing else []) + (
        [f"unknown keys {', '.join(extra)}"] if extra else [])
    if problems:
        return "has " + " and ".join(problems)
    for key, kind in schema.items():
        value = data.get(key)
        if key in data and (not isinstance(value, kind) or (
                isinstance(value, bool) and kind in (int, float, (int, float)))):
            return f"has {key} = {value!r}, expected {getattr(kind, '__name__', kind)}"
    return None


# ----------------------------------------------------------------------------- output folders


def is_finished(folder: Path) -> bool:
    return any((folder / marker).exists() for marker in FINISHED_MARKERS)


def output_folder(path: str | os.PathLike, overwrite: bool = False,
                  option: str = "--out") -> Path:
    """Checks, before any work, that a run can be written to ``path`` (which the run will
    replace as a whole): not a file, not inside a file, on a writable parent, not a folder of
    other files, and not a finished run unless ``overwrite``. Creates nothing."""
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise DriftJaxError(f"{option} {path} is a file, not a folder; choose a folder path.")
    if path.is_dir() and any(path.iterdir()):
        if is_finished(path) and not overwrite:
            raise DriftJaxError(f"{option} {path} holds a finished run; choose another folder, "
                                "or pass --overwrite to replace it (the old run stays intact "
                                "until the new one is complete).")
        if not is_finished(path) and not (path / "config.json").exists():
            raise DriftJaxError(f"{option} {path} is a folder of other files, and a run "
                                "replaces its whole folder; choose a new or empty folder.")
    return writable(path, option)


def writable(path: Path, option: str = "--out") -> Path:
    """``path`` can be created or written: its nearest existing ancestor is a writable folder."""
    path = Path(path).absolute()
    parent = path if path.is_dir() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise DriftJaxError(f"{option} {path} lies inside {parent}, which is a file; choose a "
                            "folder path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DriftJaxError(f"{option} {path}: {parent} is not writable; choose a folder you can "
                            "write to.")
    return path


# ----------------------------------------------------------------------------- memory


def available_host_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None (no check)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_device_bytes() -> int | None:
    """Free memory of the first accelerator (None on CPU, where the host figure applies)."""
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return None
    stats = device.memory_stats() or {}
    if "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_memory(nbytes: float, what: str, fix: str, device: bool = True) -> None:
    """Refuses, before allocating, work whose estimated memory exceeds what is free."""
    limits = [("host", available_host_bytes())]
    if device:
        limits.append(("device", available_device_bytes()))
    for where, free in limits:
        if free is not None and nbytes > free:
            raise DriftJaxError(f"{what} needs about {_gib(nbytes)} of {where} memory, "
                                f"{_gib(free)} is free; {fix}.")
