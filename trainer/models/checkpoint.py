"""Restore a trained model from the trainer's checkpoint file (``RUN/best_model.pth``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from trainer.data.classes import ClassMap
from trainer.models.registry import build_model

REQUIRED_KEYS = ("format_version", "model", "class_map", "model_config")
# Wrappers that prefix state-dict keys (torch.compile, DDP, AveragedModel) and AveragedModel's own counter.
WRAPPER_PREFIXES = ("_orig_mod.", "module.")
WRAPPER_KEYS = ("n_averaged",)


def _unwrap(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    unwrapped = {}
    for key, value in state_dict.items():
        if key in WRAPPER_KEYS:
            continue
        for prefix in WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        unwrapped[key] = value
    return unwrapped


def load_trained_model(path: str | Path, use_ema: bool = True,
                       map_location: str | torch.device = "cpu") -> tuple[nn.Module, ClassMap, dict[str, Any]]:
    """Returns ``(model in eval mode, class map, full training config as a dict)``.

    The architecture is rebuilt from the checkpoint's ``model_config`` without loading or downloading any
    pretrained weights; the EMA weights are used when present and ``use_ema``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or foreign pickles
        raise ValueError(f"cannot read checkpoint {str(path)!r} with weights_only=True: {error}") from error
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in REQUIRED_KEYS):
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{str(path)!r} is not a trainer checkpoint: expected keys {list(REQUIRED_KEYS)}, "
                         f"found {found}")
    if checkpoint["format_version"] != 1:
        raise ValueError(f"{str(path)!r}: unsupported checkpoint format_version {checkpoint['format_version']!r} "
                         "(this trainer reads version 1)")
    class_map = ClassMap.from_dict(checkpoint["class_map"])
    model = build_model(checkpoint["model_config"], class_map.num_classes, load_weights=False)
    use_ema_weights = use_ema and checkpoint.get("ema") is not None
    state_dict = _unwrap(checkpoint["ema"] if use_ema_weights else checkpoint["model"])
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        which = "ema" if use_ema_weights else "model"
        name = checkpoint["model_config"].get("name")
        raise ValueError(f"{str(path)!r}: the {which!r} state dict does not fit the {name!r} model built from its "
                         f"model_config: {error}") from error
    model.to(map_location).eval()
    config = yaml.safe_load(checkpoint["config"]) if checkpoint.get("config") else {}
    return model, class_map, config or {"model": dict(checkpoint["model_config"])}
