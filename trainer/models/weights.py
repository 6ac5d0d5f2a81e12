"""Resolve ``weights`` / ``weights_backbone`` settings: ``null``, ``DEFAULT``, a torchvision weights name, or a path.

``null`` never touches the network. ``DEFAULT`` (or e.g. ``FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1``)
resolves to a torchvision weights enum and downloads on first use. Anything else is a local file read with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models import WeightsEnum, get_weight

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightsPlan:
    """What a builder must load. ``load=False`` rebuilds the same architecture without loading anything
    (used when restoring a trained checkpoint, whose state dict replaces every weight anyway)."""

    detector: str | None = None
    backbone: str | None = None
    load: bool = True

    @property
    def pretrained(self) -> bool:
        """Pretrained layouts use frozen batch norm and torchvision's default number of trainable layers."""
        return self.detector is not None or self.backbone is not None

    @property
    def backbone_to_load(self) -> str | None:
        # Full detector weights overwrite the backbone, so its own weights are never fetched (as torchvision does).
        return self.backbone if self.load and self.detector is None else None


def is_torchvision_weights(spec: str) -> bool:
    return spec == "DEFAULT" or "_Weights." in spec


def resolve_enum(spec: str, default_enum: type[WeightsEnum] | None, what: str) -> WeightsEnum:
    if spec == "DEFAULT":
        if default_enum is None:
            raise ValueError(f"{what}: DEFAULT is not available for this model (it has no torchvision weights); "
                             "use null or a path to a state dict")
        return default_enum.DEFAULT
    try:
        return get_weight(spec)
    except (ValueError, KeyError, AttributeError) as error:
        raise ValueError(f"{what}: unknown torchvision weights {spec!r} ({error})") from error


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict from a local file; a trainer checkpoint (``{"model": ...}``) is accepted too."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what}: weights file {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or non-tensor pickles
        raise ValueError(f"{what}: cannot read {str(path)!r} as a state dict with weights_only=True "
                         f"({error})") from error
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
        data = data["model"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{what}: {str(path)!r} does not hold a state dict (a mapping of names to tensors)")
    return dict(data)


def detector_state_dict(spec: str, default_enum: type[WeightsEnum] | None) -> dict[str, torch.Tensor]:
    if is_torchvision_weights(spec):
        return resolve_enum(spec, default_enum, "model.weights").get_state_dict(progress=True, check_hash=True)
    return read_state_dict(spec, "model.weights")


def load_matching_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                             head_prefixes: tuple[str, ...], what: str = "model.weights") -> list[str]:
    """Load ``state_dict`` into ``model``; class-count dependent head layers whose shape differs keep their fresh
    initialisation. Returns the skipped keys. Any other missing, unexpected or mismatched key is an error."""
    own = model.state_dict()
    # Frozen batch norm has no num_batches_tracked; batch norm restores it itself when absent.
    ignorable = {k for k in own if k.endswith("num_batches_tracked")}
    missing = sorted(k for k in own if k not in state_dict and k not in ignorable)
    unexpected = sorted(k for k in state_dict if k not in own and not k.endswith("num_batches_tracked"))
    mismatched = sorted(k for k in state_dict if k in own and state_dict[k].shape != own[k].shape)
    skipped = [k for k in mismatched if k.startswith(head_prefixes)]
    bad_shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in mismatched if k not in skipped]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if bad_shapes:
        problems.append(f"shape mismatch outside the class-dependent head: {bad_shapes}")
    if problems:
        raise ValueError(f"{what}: the weights do not fit {type(model).__name__}: " + "; ".join(problems))
    loadable = {k: v for k, v in state_dict.items() if k in own and k not in skipped}
    model.load_state_dict(loadable, strict=False)
    if skipped:
        log.warning("%s: class count differs from the weights; re-initialised head layers %s", what, skipped)
    return skipped


def build_backbone_classifier(builder: Callable[..., nn.Module], default_enum: type[WeightsEnum], spec: str | None,
                              **kwargs) -> nn.Module:
    """A torchvision classification network with ``weights_backbone`` applied (``null`` -> random init)."""
    if spec is None:
        return builder(weights=None, **kwargs)
    if is_torchvision_weights(spec):
        return builder(weights=resolve_enum(spec, default_enum, "model.weights_backbone"), **kwargs)
    network = builder(weights=None, **kwargs)
    load_matching_state_dict(network, read_state_dict(spec, "model.weights_backbone"), head_prefixes=(),
                             what="model.weights_backbone")
    return network


def trainable_layers(freeze_backbone: bool, requested: int | None, pretrained: bool, max_layers: int,
                     pretrained_default: int) -> int:
    """How many backbone stages (counted from the output end) stay trainable."""
    if freeze_backbone:
        return 0
    if requested is None:
        # torchvision's defaults: fine-tune the top stages of a pretrained backbone, train all of a random one.
        return pretrained_default if pretrained else max_layers
    if not 0 <= int(requested) <= max_layers:
        raise ValueError(f"model.trainable_backbone_layers must be in 0..{max_layers}, got {requested}")
    return int(requested)
