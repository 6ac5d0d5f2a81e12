"""GroupedBatchSampler: aspect-ratio grouping, determinism per seed/epoch, sharding across processes."""
from __future__ import annotations

import math
import random

import pytest

from trainer.data.samplers import GroupedBatchSampler, aspect_ratio_groups


@pytest.fixture(scope="module")
def sizes():
    rng = random.Random(0)
    return [rng.choice([(640, 480), (480, 640), (500, 500), (1000, 300)]) for _ in range(101)]


def batches(sizes, epoch=0, **kwargs):
    sampler = GroupedBatchSampler(sizes, **kwargs)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_groups_follow_aspect_ratio():
    groups = aspect_ratio_groups([(640, 480), (480, 640), (500, 500), (1000, 300), (641, 480)])
    assert groups[0] == groups[4] and len({groups[0], groups[1], groups[2], groups[3]}) == 4


def test_single_process_covers_every_index_once_with_grouped_batches(sizes):
    groups = aspect_ratio_groups(sizes)
    result = batches(sizes, batch_size=4, seed=0)
    flat = [i for batch in result for i in batch]
    assert sorted(flat) == list(range(len(sizes)))
    assert len(result) == math.ceil(101 / 4) == len(GroupedBatchSampler(sizes, batch_size=4))
    full = [b for b in result if len({groups[i] for i in b}) == 1 and len(b) == 4]
    # Only leftovers (fewer than batch_size per group, 4 groups) can mix groups.
    assert len(full) >= len(result) - 4


def test_same_seed_and_epoch_repeat_and_epochs_differ(sizes):
    assert batches(sizes, epoch=3, batch_size=4, seed=7) == batches(sizes, epoch=3, batch_size=4, seed=7)
    assert batches(sizes, epoch=3, batch_size=4, seed=7) != batches(sizes, epoch=4, batch_size=4, seed=7)
    assert batches(sizes, epoch=3, batch_size=4, seed=7) != batches(sizes, epoch=3, batch_size=4, seed=8)


def test_no_shuffle_keeps_order_within_a_group():
    result = batches([(10, 10)] * 7, batch_size=3, seed=0, shuffle=False)
    assert result == [[0, 1, 2], [3, 4, 5], [6]]


@pytest.mark.parametrize("num_replicas", [2, 3, 4])
@pytest.mark.parametrize("drop_last", [False, True])
def test_shards_cover_every_index_with_equal_batch_counts(sizes, num_replicas, drop_last):
    per_rank = [batches(sizes, epoch=1, batch_size=4, seed=0, num_replicas=num_replicas, rank=r, drop_last=drop_last)
                for r in range(num_replicas)]
    lengths = {len(b) for b in per_rank}
    expected_len = len(GroupedBatchSampler(sizes, batch_size=4, num_replicas=num_replicas, drop_last=drop_last))
    assert lengths == {expected_len}  # every process steps the same number of times: no DDP hang
    flat = [i for rank_batches in per_rank for batch in rank_batches for i in batch]
    shard = math.ceil(len(sizes) / num_replicas)
    if drop_last:
        assert all(0 <= i < len(sizes) for i in flat)
        assert len(flat) == num_replicas * (shard // 4) * 4  # only full batches remain
    else:
        assert set(flat) == set(range(len(sizes)))  # each index seen in this epoch ...
        assert len(flat) == shard * num_replicas  # ... once, plus the padding that equalises shards
        assert len(flat) - len(sizes) < num_replicas


def test_shards_are_disjoint_apart_from_padding(sizes):
    shards = [set(i for b in batches(sizes, batch_size=5, seed=3, num_replicas=2, rank=r) for i in b) for r in (0, 1)]
    assert len(shards[0] & shards[1]) <= 1  # 101 images on 2 processes: one padded repeat


def test_accepts_a_dataset_with_image_sizes(sample_dataset_dir):
    from trainer.data.classes import ClassMap
    from trainer.data.dataset import DetectionDataset
    from trainer.data.records import load_records

    records, _ = load_records(sample_dataset_dir / "train.jsonl")
    dataset = DetectionDataset(records, ClassMap(["circle", "square", "triangle"]))
    sampler = GroupedBatchSampler(dataset, batch_size=4, seed=0)
    assert sorted(i for b in sampler for i in b) == list(range(len(dataset)))


@pytest.mark.parametrize("kwargs,message", [
    (dict(batch_size=0), "batch_size"), (dict(batch_size=2, num_replicas=2, rank=2), "rank 2")])
def test_bad_arguments(sizes, kwargs, message):
    with pytest.raises(ValueError, match=message):
        GroupedBatchSampler(sizes, **kwargs)
