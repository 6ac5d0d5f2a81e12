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

    def current_decay(self) -> float:
        return self.decay * (1.0 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``model`` is the unwrapped training model (same architecture as ``self.module``)."""
        self.updates += 1
        decay = self.current_decay()
        model_state = model.state_dict()
        for name, ema_value in self.module.state_dict().items():
            value = model_state[name].detach()
            if ema_value.dtype.is_floating_point:
                ema_value.lerp_(value.to(ema_value.dtype), 1.0 - decay)
            else:  # integer buffers (e.g. BatchNorm's num_batches_tracked) are copied, not averaged
                ema_value.copy_(value)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay, "tau": self.tau}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
