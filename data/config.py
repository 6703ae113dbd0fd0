"""Configuration as data, one mechanism for every entry point: frozen dataclasses filled from YAML and
``key=value`` overrides, every key type-checked, unknown keys listed with the known ones.

The pipeline's presets (``pipelines/presets.yaml``), the detector recipes (``detection/presets.yaml``) and the
DAE-Fuse training configs (``fusion/configs/``) are all read through ``from_dict``; ``parse_override`` is the one
parser of ``key=value`` (``optim.lr_g=2e-4``, ``phases=[{name: recon, epochs: 2}]``; values are YAML).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration file or override does not fit the dataclasses."""


def _check(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (YAML data) to type ``tp``, or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {tp}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_check(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list or tp is list:
        args = typing.get_args(tp)
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [(_check(v, args[0], f"{where}[{i}]") if args else v) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads '1e-4' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp in (bool, str):
        if not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")


def from_dict(cls: type, values: Mapping[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from nested plain data; missing keys keep their defaults."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return cls(**{k: _check(v, hints[k], f"{where}.{k}") for k, v in values.items()})


def to_dict(obj: Any) -> Any:
    """Plain YAML-able data (dicts, lists, scalars) from a (nested) dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: mappings merge key by key, anything else (lists included) is replaced."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``'optim.lr_g=2e-4'`` -> ``{'optim': {'lr_g': 0.0002}}``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{text}' is not key=value")
    return nest(key.strip(), yaml.safe_load(raw) if raw.strip() else None)


def nest(dotted: str, value: Any) -> dict[str, Any]:
    """``('optim.lr_g', 2e-4)`` -> ``{'optim': {'lr_g': 2e-4}}``."""
    nested: dict[str, Any] = {}
    node = nested
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from err
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return dict(data)


def parse_key_values(tokens: Sequence[str], error: type[Exception] = ConfigError,
                     what: str = "option") -> dict[str, Any]:
    """``["weights=w.pth", "scale=0.5"]`` -> ``{"weights": "w.pth", "scale": 0.5}``: flat ``key=value`` arguments of a
    command line (a plug-in's, a dataset reader's), values read as YAML scalars so numbers and booleans arrive typed
    (a value YAML cannot read stays a string). A token that is not ``identifier=value`` raises ``error``."""
    out: dict[str, Any] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key.isidentifier():
            raise error(f"{what} '{token}' is not key=value")
        try:
            out[key] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            out[key] = value
    return out
