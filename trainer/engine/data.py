"""The training data loader: seeded, sharded per process, resumable mid-epoch.

The batch order depends only on (seed, epoch, world size) (``GroupedBatchSampler``), and every sample's
augmentation is seeded by (seed, epoch, index), so which worker process loads a sample, or whether the
epoch was resumed half-way, never changes what the model sees.
"""
from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from trainer.data.dataset import collate_fn
from trainer.data.samplers import GroupedBatchSampler
from trainer.engine.signals import ignore_stop_signals_in_worker


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SeededAugmentation(Dataset):
    """``dataset[(index, epoch)]`` with the torch RNG seeded per sample (and restored afterwards)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed would also queue a seed for every accelerator backend,
            # recording a stack trace each time (milliseconds per sample); augmentations draw from the CPU one.
            torch.random.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            return self.dataset[index]


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """The first ``batches_per_epoch`` batches of ``batch_sampler`` for an epoch, from batch ``skip`` on."""

    def __init__(self, batch_sampler: GroupedBatchSampler, batches_per_epoch: int):
        self.batch_sampler = batch_sampler
        self.batches_per_epoch = batches_per_epoch
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.batch_sampler.set_epoch(epoch)
        self.epoch = epoch
        self.skip = min(skip, self.batches_per_epoch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in islice(self.batch_sampler, self.skip, self.batches_per_epoch):
            yield [(index, self.epoch) for index in batch]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.skip


def build_train_loader(dataset: Dataset, *, batch_size: int, accumulation_steps: int, seed: int,
                       num_replicas: int, rank: int, num_workers: int, group_factor: int,
                       pin_memory: bool = False) -> tuple[DataLoader, ResumableBatchSampler, int]:
    """Returns ``(loader, sampler, steps_per_epoch)``.

    ``steps_per_epoch = len(dataset) // global batch`` depends on the global batch only, not on how it is
    split into processes and accumulation steps, so the LR schedule (in optimizer steps) is the same for
    every layout; each process reads ``steps_per_epoch * accumulation_steps`` batches of its shard.
    """
    batches = GroupedBatchSampler(dataset, batch_size, seed=seed, num_replicas=num_replicas, rank=rank,
                                  drop_last=True, shuffle=True, group_factor=group_factor)
    steps_per_epoch = len(dataset) // (batch_size * num_replicas * accumulation_steps)
    if steps_per_epoch < 1:
        raise ValueError(f"the training set ({len(dataset)} images) is too small for one optimizer step of "
                         f"{batch_size} images x {num_replicas} process(es) x {accumulation_steps} accumulation "
                         "step(s): lower training.batch_size or training.gradient_accumulation_steps")
    sampler = ResumableBatchSampler(batches, steps_per_epoch * accumulation_steps)
    loader = DataLoader(SeededAugmentation(dataset, seed), batch_sampler=sampler, collate_fn=collate_fn,
                        num_workers=num_workers, pin_memory=pin_memory, worker_init_fn=ignore_stop_signals_in_worker,
                        # A private generator: creating an epoch's iterator must not draw from the global RNG,
                        # or a resumed run would diverge from an uninterrupted one.
                        generator=torch.Generator().manual_seed(seed))
    return loader, sampler, steps_per_epoch


def to_device(images: list[torch.Tensor], targets: list[dict], device: torch.device) -> tuple[list, list]:
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
               for t in targets]
    return images, targets
