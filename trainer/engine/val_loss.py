"""Validation loss: the training loss terms measured on the validation set, sharded over processes."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from trainer.data.dataset import collate_fn
from trainer.engine.data import to_device

# Layers whose train mode would change the model or make the loss random beyond what the loss itself samples.
_KEEP_IN_EVAL = (nn.modules.batchnorm._BatchNorm, nn.Dropout)


@torch.no_grad()
def validation_loss(model: nn.Module, dataset, accelerator, batch_size: int, num_workers: int = 0) -> dict[str, float]:
    """Mean weighted loss terms per image over ``dataset`` (``val_loss`` and ``val_loss_<term>``).

    Detection models only return losses in train mode, so the model runs in train mode with its
    normalisation and dropout layers in eval mode (running statistics untouched), under a forked RNG so
    the proposal/anchor sampling here never shifts the training run's random stream. Every process
    takes every N-th image; sums are all-reduced, so the result is the same for any process count.
    """
    indices = list(range(accelerator.process_index, len(dataset), accelerator.num_processes))
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, collate_fn=collate_fn,
                        num_workers=num_workers)
    was_training = model.training
    model.train()
    for module in model.modules():
        if isinstance(module, _KEEP_IN_EVAL) or type(module).__name__ == "StochasticDepth":
            module.eval()
    sums: dict[str, torch.Tensor] = {}
    images_seen = torch.zeros((), device=accelerator.device)
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), accelerator.autocast():
            for images, targets in loader:
                images, targets = to_device(images, targets, accelerator.device)
                for name, value in model(images, targets).items():
                    sums[name] = sums.get(name, torch.zeros((), device=accelerator.device)) + value.float() * len(images)
                images_seen += len(images)
    finally:
        model.train(was_training)
    names = tuple(getattr(model, "loss_terms", ())) or tuple(sorted(sums))
    totals = torch.stack([sums.get(name, torch.zeros((), device=accelerator.device)) for name in names] + [images_seen])
    totals = accelerator.reduce(totals, reduction="sum").tolist()
    count = max(totals[-1], 1.0)
    result = {f"val_loss_{name}": value / count for name, value in zip(names, totals[:-1])}
    result["val_loss"] = sum(totals[:-1]) / count
    return result
