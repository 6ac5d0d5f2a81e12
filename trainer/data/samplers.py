"""Aspect-ratio grouped batching, as in torchvision's detection references, sharded per process.

Batches hold images of similar aspect ratio so the padded batch tensor wastes little memory. Under
distributed training each process builds batches from its own shard of one shared, seeded
permutation (padded like ``DistributedSampler`` so every shard has the same length), so all
processes see the same number of batches per epoch and together cover every index.
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def aspect_ratio_groups(sizes: Sequence[tuple[int, int]], group_factor: int = 3) -> list[int]:
    """Group id per image from its width/height ratio, in bins ``2 ** linspace(-1, 1, 2 * k + 1)``."""
    bins = (2 ** torch.linspace(-1, 1, 2 * group_factor + 1)).tolist() if group_factor > 0 else [1.0]
    return [bisect.bisect_right(bins, width / height) for width, height in sizes]


class GroupedBatchSampler(Sampler[list[int]]):
    """Yields lists of indices; each batch comes from one aspect-ratio group where possible.

    ``dataset_or_sizes`` is a dataset with ``image_sizes()`` (header sizes, no decoding) or a list
    of (width, height). The order depends only on ``seed`` and the epoch given to
    :meth:`set_epoch`. With ``num_replicas > 1`` this process (``rank``) gets every
    ``num_replicas``-th index of the padded permutation. Leftovers of each group are batched
    together at the end of the epoch, so a process yields ``ceil(shard / batch_size)`` batches
    (``floor`` with ``drop_last``) whatever the grouping.
    """

    def __init__(self, dataset_or_sizes, batch_size: int, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 drop_last: bool = False, shuffle: bool = True, group_factor: int = 3):
        sizes = dataset_or_sizes.image_sizes() if hasattr(dataset_or_sizes, "image_sizes") else list(dataset_or_sizes)
        if not sizes:
            raise ValueError("cannot batch an empty dataset")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.group_ids = aspect_ratio_groups(sizes, group_factor)
        self.batch_size = batch_size
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.shuffle = shuffle
        self.epoch = 0
        self.shard_size = math.ceil(len(sizes) / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _shard(self) -> list[int]:
        n = len(self.group_ids)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        total = self.shard_size * self.num_replicas
        order += (order * math.ceil(total / n))[: total - n]  # pad by repeating, as DistributedSampler does
        return order[self.rank:total:self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        buckets: dict[int, list[int]] = {}
        for index in self._shard():
            bucket = buckets.setdefault(self.group_ids[index], [])
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield bucket
                buckets[self.group_ids[index]] = []
        leftovers = [index for group in sorted(buckets) for index in buckets[group]]
        for start in range(0, len(leftovers), self.batch_size):
            batch = leftovers[start:start + self.batch_size]
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch

    def __len__(self) -> int:
        if self.drop_last:
            return self.shard_size // self.batch_size
        return math.ceil(self.shard_size / self.batch_size)
