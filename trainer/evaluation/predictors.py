"""Turn a checkpoint file into a predictor: ``predictor(list of float [3,H,W] images) -> list of detections``.

``.pth``/``.pt`` files are trainer checkpoints (PyTorch model, EMA weights when present); ``.onnx`` files
run through onnxruntime with the same call signature, so evaluation and prediction never care which.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from trainer.data.classes import ClassMap

PYTORCH_SUFFIXES = (".pth", ".pt")
ONNX_SUFFIXES = (".onnx",)


def checkpoint_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in PYTORCH_SUFFIXES:
        return "pytorch"
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    raise ValueError(f"checkpoint {str(path)!r}: unknown format {suffix!r}; expected one of "
                     f"{', '.join(PYTORCH_SUFFIXES + ONNX_SUFFIXES)}")


def load_predictor(path: str | Path, class_map: ClassMap, use_ema: bool = True,
                   device: torch.device | str = "cpu") -> tuple[Any, dict]:
    """Returns ``(predictor, model config dict or {})``; the checkpoint's classes must equal ``class_map``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if checkpoint_format(path) == "onnx":
        try:
            from trainer.deploy.onnx_runtime import OnnxPredictor
        except ImportError as error:
            raise RuntimeError(f"cannot evaluate {str(path)!r}: ONNX support (trainer.deploy.onnx_runtime) "
                               f"is not available: {error}") from error
        predictor = OnnxPredictor(path)
        _check_classes(path, predictor.class_map, class_map)
        return predictor, json.loads(predictor.metadata.get("model_config", "{}"))  # written by the exporter
    from trainer.models import load_trained_model

    # Load on the CPU, then move: torch.load cannot map to devices such as accelerate's "cpu:0".
    model, checkpoint_classes, config = load_trained_model(path, use_ema=use_ema, map_location="cpu")
    model.to(device)
    _check_classes(path, checkpoint_classes, class_map)
    return model, dict(config.get("model") or {})


def _check_classes(path: Path, found: ClassMap | None, expected: ClassMap) -> None:
    if found is not None and found != expected:
        raise ValueError(f"checkpoint {str(path)!r} was trained on classes {list(found.names)} "
                         f"but the class map says {list(expected.names)}")
