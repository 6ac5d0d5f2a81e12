"""Exponential moving average of the model weights with a decay warm-up.

``decay_t = decay * (1 - exp(-updates / tau))`` (as in ultralytics' ModelEMA and timm's warmup option):
the average follows the model closely at first, so early checkpoints are not dominated by the
initial random weights, and approaches ``decay`` after a few ``tau`` updates.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float = 0.9998, tau: float = 2000.0):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema.decay must be in (0, 1), got {decay}")
        if tau <= 0:
            raise ValueError(f"ema.tau must be positive, got {tau}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = 0
        self._pairs = None  # (model, averaged, their sources, copied, their sources), built by the first update

    def current_decay(self) -> float:
        return self.decay * (1.0 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``model`` is the unwrapped training model (same architecture as ``self.module``, same object every
        call: its tensors are paired with the average's once)."""
        self.updates += 1
        if self._pairs is None or self._pairs[0] is not model:
            self._pairs = (model, *_pair_tensors(self.module, model))
        _, averaged, averaged_sources, copied, copied_sources = self._pairs
        # One fused call per kind instead of a Python loop over hundreds of tensors: the EMA runs every step.
        torch._foreach_lerp_(averaged, averaged_sources, 1.0 - self.current_decay())
        if copied:
            torch._foreach_copy_(copied, copied_sources)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay, "tau": self.tau}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def _pair_tensors(average: nn.Module, model: nn.Module) -> tuple[list, list, list, list]:
    """Floating-point tensors (averaged) and the others (copied, e.g. BatchNorm's num_batches_tracked), each with
    the model's tensor in the same place. Parameters then buffers, in registration order (the same for a module
    and its deep copy)."""
    averaged, averaged_sources, copied, copied_sources = [], [], [], []
    for ema_tensor, tensor in zip([*average.parameters(), *average.buffers()], [*model.parameters(), *model.buffers()],
                                  strict=True):
        if ema_tensor.dtype.is_floating_point:
            averaged.append(ema_tensor)
            averaged_sources.append(tensor.detach())
        else:
            copied.append(ema_tensor)
            copied_sources.append(tensor)
    return averaged, averaged_sources, copied, copied_sources
