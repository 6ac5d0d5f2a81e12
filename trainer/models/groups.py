"""Optimizer parameter groups: backbone vs the rest, and weight decay vs none (norm parameters and biases)."""
from __future__ import annotations

from torch import nn

# Normalisation layers whose affine parameters get no weight decay (FrozenBatchNorm2d has buffers only).
NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm,
               nn.LocalResponseNorm)


def parameter_groups(model: nn.Module) -> dict[str, dict[str, list[nn.Parameter]]]:
    """``{"backbone": {"decay": [...], "no_decay": [...]}, "head": {...}}`` over the trainable parameters.

    ``backbone`` holds parameters under the model's ``backbone_prefix`` (the pretrained feature extractor, which
    usually wants a lower learning rate); ``head`` holds everything else (neck, heads, extra layers).
    """
    prefix = getattr(model, "backbone_prefix", "backbone.")
    groups = {"backbone": {"decay": [], "no_decay": []}, "head": {"decay": [], "no_decay": []}}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            part = "backbone" if full_name.startswith(prefix) else "head"
            decay = "no_decay" if isinstance(module, NORM_LAYERS) or param_name == "bias" else "decay"
            groups[part][decay].append(param)
    return groups
