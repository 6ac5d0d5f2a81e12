"""The search space, read from ``sweep.search_space`` in the YAML config.

Each leaf is a mapping with a ``distribution`` field; its position in the tree is the dotted config key it sets::

    search_space:
      training:
        learning_rate: {distribution: loguniform, low: 1.0e-4, high: 3.0e-2}
        warmup_iters: {distribution: int, low: 0, high: 500}
      model:
        loss_weights:
          "*": {distribution: uniform, low: 0.5, high: 2.0}   # each loss weight the model has
        head_convs: {distribution: choice, values: [1, 2, 3]}

``int`` bounds are inclusive. The leaves become Optuna distributions, which OptunaSearch samples directly and which
rebuild the Optuna study for the parameter importances after the sweep.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import optuna.distributions as od
from omegaconf import DictConfig, OmegaConf

DISTRIBUTIONS = ("uniform", "loguniform", "int", "logint", "choice")
_MISSING = object()


class SweepConfigError(ValueError):
    """A malformed sweep setting (search space, points, resources); the message names the key."""


def _leaf_to_distribution(key: str, spec: Mapping[str, Any]) -> od.BaseDistribution:
    kind = spec["distribution"]
    where = f"sweep.search_space.{key}"
    if kind not in DISTRIBUTIONS:
        raise SweepConfigError(f"{where}: unknown distribution {kind!r}; expected one of {', '.join(DISTRIBUTIONS)}")
    if kind == "choice":
        values = spec.get("values")
        if not isinstance(values, (list, tuple)) or not values:
            raise SweepConfigError(f"{where}: 'choice' needs a non-empty list 'values'")
        return od.CategoricalDistribution(tuple(values))
    missing = [field for field in ("low", "high") if spec.get(field) is None]
    if missing:
        raise SweepConfigError(f"{where}: {kind!r} needs {' and '.join(missing)}")
    low, high = spec["low"], spec["high"]
    if not (isinstance(low, (int, float)) and isinstance(high, (int, float))) or isinstance(low, bool):
        raise SweepConfigError(f"{where}: low/high must be numbers, got {low!r} and {high!r}")
    if not low < high:
        raise SweepConfigError(f"{where}: low ({low}) must be below high ({high})")
    log = kind in ("loguniform", "logint")
    if log and low <= 0:
        raise SweepConfigError(f"{where}: {kind!r} needs low > 0, got {low}")
    if kind in ("int", "logint"):
        if int(low) != low or int(high) != high:
            raise SweepConfigError(f"{where}: {kind!r} bounds must be integers, got {low} and {high}")
        return od.IntDistribution(int(low), int(high), log=log)
    return od.FloatDistribution(float(low), float(high), log=log)


def _leaves(node: Mapping[str, Any], prefix: str = ""):
    for name, value in node.items():
        key = f"{prefix}{name}"
        if not isinstance(value, Mapping):
            raise SweepConfigError(
                f"sweep.search_space.{key}: expected a mapping with a 'distribution' field, got {value!r}"
            )
        if "distribution" in value:
            yield key, value
        else:
            yield from _leaves(value, f"{key}.")


def _expand_wildcard(key: str, base_config: DictConfig | None) -> list[str]:
    """``model.loss_weights.*`` -> one key per entry of ``model.loss_weights`` (whatever the model calls them)."""
    if not key.endswith(".*"):
        return [key]
    parent = key[:-2]
    node = None if base_config is None else OmegaConf.select(base_config, parent, default=None)
    if not isinstance(node, DictConfig) or not node:
        raise SweepConfigError(f"sweep.search_space.{key}: the training config has no mapping {parent!r} to expand")
    return [f"{parent}.{name}" for name in node]


def parse_search_space(search_space: Mapping | DictConfig,
                       base_config: DictConfig | None = None) -> dict[str, od.BaseDistribution]:
    """Returns ``{dotted config key: Optuna distribution}``.

    With ``base_config``, every key must already exist there, so that a typo fails before any trial starts instead
    of silently tuning a key the engine never reads, and a ``*`` leaf (``model.loss_weights.*``) expands to every
    key under its parent, each with the same distribution.
    """
    if isinstance(search_space, DictConfig):
        search_space = OmegaConf.to_container(search_space, resolve=True)
    space = {}
    for key, spec in _leaves(search_space or {}):
        distribution = _leaf_to_distribution(key, spec)
        for expanded in _expand_wildcard(key, base_config):
            space[expanded] = distribution
    if not space:
        raise SweepConfigError("sweep.search_space is empty: add at least one parameter to tune")
    if base_config is not None:
        unknown = [key for key in space if OmegaConf.select(base_config, key, default=_MISSING) is _MISSING]
        if unknown:
            raise SweepConfigError(
                f"sweep.search_space names keys the training config does not have: {', '.join(unknown)}"
            )
    return space


def contains(distribution: od.BaseDistribution, value: Any) -> bool:
    """Whether ``value`` is a point of ``distribution`` (bounds inclusive)."""
    if isinstance(distribution, od.CategoricalDistribution):
        return value in distribution.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return False
    if isinstance(distribution, od.IntDistribution) and int(value) != value:
        return False
    return distribution.low <= value <= distribution.high


def apply_params(config: DictConfig, params: Mapping[str, Any]) -> DictConfig:
    """Sets each dotted key of ``params`` in a copy of ``config``."""
    config = config.copy()
    for key, value in params.items():
        OmegaConf.update(config, key, value, merge=False)
    return config


def params_to_overrides(params: Mapping[str, Any]) -> dict:
    """``{"optimizer.lr": 0.01}`` -> ``{"optimizer": {"lr": 0.01}}`` (the nested form a config file holds)."""
    nested: dict = {}
    for key, value in sorted(params.items()):
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def flatten_params(point: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The inverse of ``params_to_overrides``; dotted keys may also be given as they are."""
    flat: dict[str, Any] = {}
    for name, value in point.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{key}."))
        else:
            flat[key] = value
    return flat


def parse_points(points, space: Mapping[str, od.BaseDistribution]) -> list[dict[str, Any]]:
    """``sweep.points_to_evaluate`` as dotted-key dicts, each value checked against the space."""
    parsed = []
    for index, point in enumerate(points or []):
        if isinstance(point, DictConfig):
            point = OmegaConf.to_container(point, resolve=True)
        flat = flatten_params(point)
        for key, value in flat.items():
            where = f"sweep.points_to_evaluate[{index}].{key}"
            if key not in space:
                raise SweepConfigError(f"{where}: not a parameter of sweep.search_space ({', '.join(space)})")
            if not contains(space[key], value):
                raise SweepConfigError(f"{where}: {value!r} lies outside its distribution {space[key]}")
        parsed.append(flat)
    return parsed
