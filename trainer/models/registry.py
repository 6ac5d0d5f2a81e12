"""Model registry: ``@register_model("name")`` on a builder, ``build_model(cfg.model, num_classes)`` to construct.

A builder has the signature ``builder(num_classes, plan: WeightsPlan, **options)``; its keyword options are the
model's config keys (besides ``name``, ``weights``, ``weights_backbone`` and ``loss_weights``, which are handled
here), so a misspelt key in ``configs/model/<name>.yaml`` is reported instead of silently ignored.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from trainer.models.contract import DetectorContract
from trainer.models.weights import WeightsPlan, detector_state_dict, load_matching_state_dict

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_HANDLED_HERE = ("name", "weights", "weights_backbone", "loss_weights")


def register_model(name: str):
    def decorator(builder: Callable[..., nn.Module]):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = builder
        return builder
    return decorator


def available_models() -> list[str]:
    return sorted(_MODELS)


def _as_dict(model_cfg: Mapping | DictConfig) -> dict[str, Any]:
    if isinstance(model_cfg, DictConfig):
        return OmegaConf.to_container(model_cfg, resolve=True)
    return dict(model_cfg)


def build_model(model_cfg: Mapping | DictConfig, num_classes: int, load_weights: bool = True) -> nn.Module:
    """Build ``model_cfg.name`` for ``num_classes`` foreground classes (labels 1..K; K from the class map).

    ``load_weights=False`` builds the exact architecture the settings imply (e.g. frozen batch norm for
    pretrained layouts) without loading or downloading anything: for restoring a trained checkpoint.
    """
    cfg = _as_dict(model_cfg)
    name = cfg.get("name")
    if name not in _MODELS:
        raise ValueError(f"model.name={name!r} is not a registered model; choose one of {available_models()}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int (the class map's K), got {num_classes!r}")
    builder = _MODELS[name]
    options = {k: v for k, v in cfg.items() if k not in _HANDLED_HERE}
    accepted = [p for p in inspect.signature(builder).parameters if p not in ("num_classes", "plan")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"model {name!r}: unknown config key(s) {unknown}; valid keys are "
                         f"{sorted([*accepted, *_HANDLED_HERE])}")
    plan = weights_plan(cfg, load_weights)
    model = builder(num_classes, plan, **options)
    if not isinstance(model, DetectorContract):
        raise TypeError(f"builder for {name!r} must return a DetectorContract model, got {type(model).__name__}")
    if plan.load and plan.detector is not None:
        state_dict = detector_state_dict(plan.detector, model.weights_enum)
        load_matching_state_dict(model, state_dict, model.head_prefixes)
    model.set_loss_weights(cfg.get("loss_weights"))
    return model


def weights_plan(model_cfg: Mapping | DictConfig, load_weights: bool = True) -> WeightsPlan:
    """What ``model.weights`` / ``model.weights_backbone`` ask for (``.pretrained``: does training start from them)."""
    cfg = _as_dict(model_cfg)
    return WeightsPlan(detector=_spec(cfg.get("weights")), backbone=_spec(cfg.get("weights_backbone")),
                       load=load_weights)


def _spec(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none")):
        return None
    return str(value)
