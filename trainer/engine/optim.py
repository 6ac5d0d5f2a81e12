"""Optimizer, learning-rate scaling and the LR schedule, all counted in optimizer steps.

The schedule is a pure function of the optimizer step, so it is identical for any number of
processes and any gradient accumulation, and resuming only needs the step counter. The scheduler is
deliberately *not* passed to ``accelerator.prepare``: a prepared scheduler is stepped once per process
per call, which would run the schedule ``num_processes`` times too fast.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from trainer.models import parameter_groups

logger = logging.getLogger(__name__)

SCHEDULES = ("multistep", "cosine", "constant")
WARMUP_MAX_FRACTION = 5  # the warmup is at most 1/5 of the run's optimizer steps


def scaled_learning_rate(base_lr: float, global_batch_size: int, base_batch_size: int) -> float:
    """Linear scaling rule (Goyal et al. 2017): ``base_lr`` is right for ``base_batch_size`` images per step."""
    if global_batch_size < 1 or base_batch_size < 1:
        raise ValueError(f"batch sizes must be positive, got global={global_batch_size} base={base_batch_size}")
    return base_lr * global_batch_size / base_batch_size


def backbone_lr_factor(training: Mapping, pretrained: bool) -> float:
    """``training.backbone_lr_factor``; null = 0.1 for a backbone that starts from pretrained weights (keep its
    features), 1.0 for a random one (a lower LR would only slow it down), like ``trainable_backbone_layers``."""
    value = training["backbone_lr_factor"]
    if value is None:
        return 0.1 if pretrained else 1.0
    if float(value) < 0:
        raise ValueError(f"training.backbone_lr_factor must be >= 0, got {value}")
    return float(value)


def build_optimizer(model: nn.Module, lr: float, training: Mapping, backbone_factor: float) -> torch.optim.SGD:
    """SGD (Nesterov by default) over four groups: backbone/head x decay/no-decay.

    Backbone parameters get ``lr * backbone_factor`` (see ``backbone_lr_factor``); norm parameters and biases get
    ``norm_weight_decay`` (default 0) instead of ``weight_decay``.
    """
    lr_factors = {"backbone": backbone_factor, "head": 1.0}
    decays = {"decay": float(training["weight_decay"]), "no_decay": float(training["norm_weight_decay"])}
    groups = []
    for part, by_decay in parameter_groups(model).items():
        for decay_kind, params in by_decay.items():
            if params:
                groups.append({"params": params, "lr": lr * lr_factors[part], "weight_decay": decays[decay_kind],
                               "name": f"{part}/{decay_kind}"})
    if not groups:
        raise ValueError("the model has no trainable parameters (is everything frozen?)")
    momentum = float(training["momentum"])
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=bool(training["nesterov"]) and momentum > 0)


@dataclass(frozen=True)
class LRSchedule:
    """LR multiplier at optimizer step ``step``: linear warmup times the decay schedule.

    ``milestones`` are optimizer steps (epochs x steps per epoch). Picklable and stateless, so
    ``LambdaLR.state_dict`` stores its fields and a resumed run continues exactly.
    """

    name: str
    total_steps: int
    warmup_steps: int
    warmup_factor: float
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    min_factor: float = 0.0

    def __call__(self, step: int) -> float:
        warmup = 1.0
        if step < self.warmup_steps:
            warmup = self.warmup_factor + (1.0 - self.warmup_factor) * step / self.warmup_steps
        if self.name == "multistep":
            decay = self.gamma ** sum(step >= m for m in self.milestones)
        elif self.name == "cosine":
            progress = min(step / max(self.total_steps, 1), 1.0)
            decay = self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            decay = 1.0
        return warmup * decay


def build_schedule(training: Mapping, steps_per_epoch: int) -> LRSchedule:
    name = str(training["lr_scheduler"])
    if name not in SCHEDULES:
        raise ValueError(f"training.lr_scheduler={name!r} is not one of {SCHEDULES}")
    milestones: Sequence[int] = training["lr_milestones"] or ()
    total_steps = int(training["num_epochs"]) * steps_per_epoch
    # A short run (a few epochs of a small dataset, a sweep trial) must still reach its LR: the warmup takes at
    # most a fifth of the run (the default 500 steps would otherwise be the whole of a 26-epoch run of 20 steps).
    warmup_steps = min(int(training["warmup_iters"]), total_steps // WARMUP_MAX_FRACTION)
    return LRSchedule(name=name, total_steps=total_steps,
                      warmup_steps=warmup_steps, warmup_factor=float(training["warmup_factor"]),
                      milestones=tuple(int(m) * steps_per_epoch for m in milestones),
                      gamma=float(training["lr_gamma"]), min_factor=float(training["min_lr_factor"]))


def clip_gradients(parameters: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clips the gradients of ``parameters`` in place to a total L2 norm of ``max_norm``; returns the norm before.

    The same gradients as ``torch.nn.utils.clip_grad_norm_``, which multiplies every gradient by
    ``min(1, max_norm / norm)`` even when that is 1: scaling only above the limit saves a pass over all
    gradients in most steps. ``norm > max_norm`` reads the norm from the device; the loop logs it each step
    anyway. Gradients must be whole on every process (DDP, not FSDP or DeepSpeed shards) and unscaled.
    """
    norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
    if norm > max_norm:
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)
    return norm


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: LRSchedule) -> torch.optim.lr_scheduler.LambdaLR:
    """Step it once per optimizer step (skipped steps included), never through ``accelerator.prepare``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
