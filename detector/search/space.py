"""The search space: `search.space` entries -> values drawn for one trial, and their check before a study."""
from __future__ import annotations

from typing import Any

import optuna

from .. import config as config_mod, preflight
from ..config import Config
from ..errors import ConfigError
from ..typed_yaml import numeric


def suggest(trial: optuna.trial.BaseTrial, space: dict[str, Any]) -> dict[str, Any]:
    """Draw one value per searched config key: a list is categorical, {low, high, log, step} a range."""
    return {key: _suggest_one(trial, key, spec) for key, spec in space.items()}


def check_space(cfg: Config) -> None:
    """Every search.space entry names a config key and every value it can draw fits that key and passes the
    run's preflight checks: checked before a study records anything, so a typo fails at once instead of
    failing every trial."""
    for key, spec in cfg.search.space.items():
        probe = _SpaceProbe()
        _suggest_one(probe, key, spec)
        for value in probe.values:
            try:
                preflight.check(config_mod.with_values(cfg, {key: value}, source="search.space"))
            except ConfigError as e:
                raise ConfigError(f"search.space.{key}: the value {value!r} does not fit ({e})") from None


def starting_params(cfg: Config) -> dict[str, Any]:
    """The config's own value of every searched key the space can draw (trial 0 of a study runs them, so the
    report shows the starting recipe beside what the search found). A value outside its range is left out:
    the sampler draws that key."""
    raw = config_mod.resolve_paths(cfg).to_dict()
    out = {}
    for key, spec in cfg.search.space.items():
        node: Any = raw
        for part in key.split("."):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                node = node.get(part) if isinstance(node, dict) else None
        if _drawable(node, spec):
            out[key] = node
    return out


def _drawable(value: Any, spec: Any) -> bool:
    if isinstance(spec, list):
        return any(value == v and type(value) is type(v) for v in spec)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not isinstance(spec, dict):
        return False
    low, high = numeric(spec.get("low")), numeric(spec.get("high"))
    return isinstance(low, (int, float)) and isinstance(high, (int, float)) and low <= value <= high


class _SpaceProbe:
    """Stands in for a trial: records the values a search spec can draw at its ends."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        self.values = list(choices)
        return choices[0]

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        self.values = [low, high]
        return low

    def suggest_float(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> float:
        self.values = [low, high]
        return low


def _suggest_one(trial: optuna.trial.BaseTrial, key: str, spec: Any) -> Any:
    where = f"search.space.{key}"
    try:
        tp = config_mod.field_type(key)
    except ConfigError:
        raise ConfigError(f"{where}: '{key}' is not a config key; search keys are dotted config keys "
                          "such as train.lr or model.backbone") from None
    if isinstance(spec, list):
        if not spec or not all(v is None or isinstance(v, (bool, int, float, str)) for v in spec):
            raise ConfigError(f"{where}: a categorical search needs a non-empty list of plain values")
        return trial.suggest_categorical(key, spec)
    if not isinstance(spec, dict) or not {"low", "high"} <= spec.keys() or set(spec) - {"low", "high", "log", "step"}:
        raise ConfigError(f"{where}: give a list of choices or {{low, high}} with optional log and step; got {spec!r}")
    low, high = numeric(spec["low"]), numeric(spec["high"])
    log, step = bool(spec.get("log", False)), numeric(spec.get("step"))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low > high:
        raise ConfigError(f"{where}: low and high must be numbers with low <= high; got {low!r}, {high!r}")
    if log and step is not None:
        raise ConfigError(f"{where}: log and step cannot be combined")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise ConfigError(f"{where}: step must be a positive number; got {step!r}")
    if tp is int and not all(float(v).is_integer() for v in (low, high, step or 1)):
        raise ConfigError(f"{where}: {key} is an integer, so low, high and step must be whole numbers; got "
                          f"low {low!r}, high {high!r}, step {step!r}")
    if tp is int or (tp is Any and all(isinstance(v, int) for v in (low, high, step or 1))):
        return trial.suggest_int(key, int(low), int(high), step=int(step or 1), log=log)
    if tp is float or tp is Any:  # Any: a number inside an Albumentations pipeline
        return trial.suggest_float(key, float(low), float(high), step=step, log=log)
    raise ConfigError(f"{where}: {key} is not a number; search it with a list of choices")
