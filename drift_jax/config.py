"""Typed configs as frozen dataclasses: built from dicts with unknown keys and wrong types refused,
overridden with ``key.sub=value`` strings, and written beside every result. (`ExecutionConfig`
lives with its per-backend resolution in `drift_jax.execution`.)"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from drift_jax.errors import DriftJaxError
from drift_jax.execution import ExecutionConfig
from drift_jax.validate import ConfigValueError, bounded, check_fields, read_json

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One recipe for every member of a stack (docs/DESIGN.md: Adam 1e-3, batch 64, softmax CE)."""

    epochs: int = bounded(5, ge=1)
    batch_size: int = bounded(64, ge=1)
    learning_rate: float = bounded(1e-3, gt=0)
    weight_decay: float = bounded(0.0, ge=0)
    augment_flip: bool = False
    augment_crop: int = bounded(0, ge=0)  # pad-and-crop margin in pixels; 0 = off
    execution: ExecutionConfig = dataclasses.field(default_factory=ExecutionConfig)

    def __post_init__(self):
        check_fields(self)


@dataclasses.dataclass(frozen=True)
class TrainRunConfig:
    """`drift-jax train`: data, architecture, stack size, recipe, seed."""

    data: str = "digits"
    arch: str = "seedcnn"
    models: int = bounded(2, ge=1)
    seed: int = bounded(0, ge=0)
    holdout_fraction: float = bounded(0.2, gt=0, lt=1)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self):
        check_fields(self)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise DriftJaxError(f"config {where}: expected a mapping, got {value!r}.")
        return from_dict(tp, value, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise DriftJaxError(f"config {where}: {value!r} is not one of "
                                f"{', '.join(map(repr, typing.get_args(tp)))}.")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except DriftJaxError:
                pass
        raise DriftJaxError(f"config {where}: {value!r} matches none of {tp}.")
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise DriftJaxError(f"config {where}: expected a list, got {value!r}.")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return tuple(_coerce(v, item, where) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and
                                                not (tp is int and isinstance(value, bool))):
        raise DriftJaxError(f"config {where}: expected {_type_name(tp)}, got {value!r} "
                            f"({type(value).__name__}).")
    return value


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Builds a config dataclass from a dict; unknown keys and wrong types raise DriftJaxError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        prefix = f"{where}." if where else ""
        keys = ", ".join(prefix + k for k in sorted(unknown))
        raise DriftJaxError(f"unknown config key(s) {keys}"
                            f"; valid keys: {', '.join(prefix + n for n in sorted(names))}.")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigValueError as e:  # name the key by its full path
        raise ConfigValueError(f"{where}.{e.field}" if where else e.field, e.message) from None


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def with_overrides(config: T, overrides: list[str]) -> T:
    """Applies ``a.b=value`` overrides (values parsed as JSON, else taken as strings)."""
    data = to_dict(config)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise DriftJaxError(f"override {item!r} must look like key=value "
                                "(e.g. train.epochs=3).")
        node, tp = data, type(config)
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise DriftJaxError(f"override {item!r}: {p!r} is not a config section.")
            node, tp = node[p], _field_type(tp, p)
        # A free-form mapping (e.g. scenario_params) takes any key; a config section only its own.
        if leaf not in node and dataclasses.is_dataclass(tp):
            raise DriftJaxError(f"override {item!r}: unknown key {key!r}; valid here: "
                                f"{', '.join(sorted(node))}.")
        node[leaf] = _parse_value(value)
    return from_dict(type(config), data)


def _field_type(tp, name: str):
    """The declared type of field ``name`` of a config dataclass (None inside a mapping)."""
    if not dataclasses.is_dataclass(tp):
        return None
    return typing.get_type_hints(tp).get(name)


def read_json_object(path: str | Path) -> dict:
    """A config file's JSON object; a missing file or bad JSON is a user error."""
    return read_json(path, None, "config file", "give an existing file holding a JSON object.")


def load_json(cls: type[T], path: str | Path) -> T:
    return from_dict(cls, read_json_object(path))
