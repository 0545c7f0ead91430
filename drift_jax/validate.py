"""One validation layer, run before any work: numbers of every config (finite, in the bounds each
field states), output folders (writable, not a file, never a finished run unless overwriting is
asked for) and memory (an estimate from shapes against what the host and device have free).

Config classes declare bounds on their fields with `bounded` and call `check_fields` in
``__post_init__``; `config.from_dict` names the failing key with its full dotted path.
"""

from __future__ import annotations

import dataclasses
import errno
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


def resolved(path: str | os.PathLike, option: str = "--out") -> Path:
    """``path`` absolute with every symlink followed (a missing tail kept as given), so that a
    run is written where the link points and aliasing is judged on real folders; a symlink loop
    is refused here, before any work."""
    try:
        return Path(path).expanduser().resolve()
    except RuntimeError:  # Python < 3.13 reports a loop so
        raise DriftJaxError(f"{option} {path} runs into a symlink loop; point it at a real "
                            "folder.") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DriftJaxError(f"{option} {path} runs into a symlink loop; point it at a real "
                                "folder.") from None
        raise DriftJaxError(f"{option} {path} cannot be resolved ({e.strerror}); check the path "
                            "and its permissions.") from None


@dataclasses.dataclass(frozen=True)
class Input:
    """A path a command reads (a data folder or archive, a checkpoint, a run). ``holds_outputs``:
    the command's own layout writes inside it (a sweep's report/, a run's mitigation/)."""

    path: str | os.PathLike
    what: str
    holds_outputs: bool = False


def config_inputs(config) -> list[Input]:
    """The paths a train or detect config reads: its data specs' folders and archives and its
    production model checkpoint."""
    from drift_jax.data import spec_paths

    found = []
    for field, what in (("data", "the data"), ("base", "the base data"),
                        ("production", "the production data")):
        spec = getattr(config, field, None)
        found += [Input(path, f"{what} of {spec}") for path in spec_paths(spec)]
    model = getattr(config, "production_model", None)
    if isinstance(model, str) and model:
        found.append(Input(model, "the production model checkpoint"))
    return found


def check_apart(out: Path, inputs, option: str = "--out") -> None:
    """Refuses an output (``out``, resolved) that aliases an input: the same path, a folder
    holding the input (writing replaces the folder whole, so the input would go), or a path
    inside the input (the run would add files to what it reads: an image folder would gain a
    class). An input that cannot be resolved is left to its reader, which names it."""
    for given in inputs:
        try:
            source = resolved(given.path, given.what)
        except DriftJaxError:
            continue
        if out == source:
            raise DriftJaxError(f"{option} {out} is {given.what}, which this command reads; "
                                f"writing there would destroy it: choose another {option}.")
        if source.is_relative_to(out):
            raise DriftJaxError(f"{option} {out} holds {given.what} {source}, which this command "
                                "reads, and writing replaces the whole folder: choose an "
                                f"{option} that does not contain it.")
        if out.is_relative_to(source) and not given.holds_outputs:
            raise DriftJaxError(f"{option} {out} lies inside {given.what} {source}, which this "
                                "command reads; writing there would change it: choose an "
                                f"{option} outside it.")


def output_folder(path: str | os.PathLike, overwrite: bool = False,
                  option: str = "--out", inputs=()) -> Path:
    """Checks, before any work, that a run can be written to ``path`` (which the run will
    replace as a whole): symlinks resolved (a loop refused), not a file, not inside a file, on
    a writable parent, not a folder of other files, not a finished run unless ``overwrite``,
    and apart from every one of the command's ``inputs`` (`Input`, `check_apart`), overwrite
    or not. Creates nothing; returns the resolved path to write to."""
    path = resolved(path, option)
    check_apart(path, inputs, option)
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
