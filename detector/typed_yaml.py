"""YAML config files turned into typed dataclasses: `base:` inheritance, dotted `key=value` overrides, and
values coerced to the declared field types with errors that name the file and the dotted key.

Generic: it knows dataclasses and type hints, not detector's schema (config.py).
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import ConfigError

_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def read_with_bases(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """A config file merged over its `base:` file (a path relative to it), recursively."""
    raw = _read_yaml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a path to another config file")
    base_path = (path.parent / base).resolve()
    if base_path in seen:
        raise ConfigError(f"{path}: base configs form a cycle through {base_path}")
    return _merge(read_with_bases(base_path, seen + (base_path,)), raw)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror}); check the path") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}); save it as UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested deeper than any config; write its sections as a config does") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data, model, train, ...)")
    return raw


def apply_override(raw: dict[str, Any], item: str) -> None:
    """A CLI `--set key=value`: the value read as YAML (`1e-3`, `[a, b]`, `null`), else kept as text."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=0.001")
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):
        value = text
    set_key(raw, key, value, item)


def set_key(raw: dict[str, Any], key: str, value: Any, item: str | None = None) -> None:
    """Set the dotted `key` (train.lr) of a raw config mapping to `value`, making its sections as needed."""
    said = item or f"{key}={value!r}"
    if not isinstance(key, str) or not key.strip():
        raise ConfigError(f"override {said}: the key must be a dotted config key, e.g. train.lr")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {said}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    where = prefix.rstrip(".") or "top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = prefix + str(unknown[0])
        raise ConfigError(
            f"{source}: unknown key '{key}'; valid keys in {where}: {', '.join(sorted(names))}"
        )
    values = {name: _coerce(hints[name], raw[name], prefix + name, source) for name in raw}
    return cls(**values)


_YAML_WORDS = {False: "off", True: "on"}


def _coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key + ".", source)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        for arg in sorted(args, key=lambda a: a is str):  # try str last so `true` stays a bool
            try:
                return _coerce(arg, value, key, source)
            except ConfigError:
                continue
        raise _type_error(key, value, " or ".join(_type_name(a) for a in args), source)
    if origin is Literal:
        if isinstance(value, bool) and _YAML_WORDS[value] in args:  # YAML 1.1 reads `amp: off` as false
            return _YAML_WORDS[value]
        if isinstance(value, bool) or value not in args:
            raise ConfigError(f"{source}: {key} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(key, value, "a mapping", source)
        return {k: v for k, v in value.items() if v is not None}  # null removes an inherited entry
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, value, "a list", source)
        return [_coerce(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise _type_error(key, value, f"a list of {len(args)} numbers", source)
        return tuple(_coerce(a, v, f"{key}[{i}]", source) for i, (a, v) in enumerate(zip(args, value)))
    if tp is type(None):
        if value is not None:
            raise _type_error(key, value, "null", source)
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise _type_error(key, value, "true or false", source)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(key, value, "an integer", source)
        return value
    if tp is float:
        value = numeric(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(key, value, "a number", source)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _type_error(key, value, "a string", source)
        return value
    raise TypeError(f"unsupported config type {tp} for {key}")


def numeric(value: Any) -> Any:
    """`value`, or the float a numeric string stands for: YAML 1.1 reads 1e-4 (no dot) as a string."""
    return float(value) if isinstance(value, str) and _FLOAT.match(value.strip()) else value


def _type_error(key: str, value: Any, expected: str, source: str) -> ConfigError:
    return ConfigError(f"{source}: {key} must be {expected}; got {value!r}")


def _type_name(tp: Any) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))
