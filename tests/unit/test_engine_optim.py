"""LR scaling, the warmup + decay schedule in optimizer steps, and the optimizer's parameter groups."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from trainer.data.samplers import GroupedBatchSampler
from trainer.engine.data import build_train_loader
from trainer.engine.optim import (LRSchedule, backbone_lr_factor, build_optimizer, build_schedule, build_scheduler,
                                  clip_gradients, scaled_learning_rate)
from trainer.models import build_model

TRAINING = OmegaConf.create({
    "num_epochs": 26, "lr_scheduler": "multistep", "lr_milestones": [16, 22], "lr_gamma": 0.1,
    "warmup_iters": 500, "warmup_factor": 0.001, "min_lr_factor": 0.0, "momentum": 0.9, "nesterov": True,
    "weight_decay": 1e-4, "norm_weight_decay": 0.0, "backbone_lr_factor": 0.1,
})


def test_linear_scaling_rule():
    assert scaled_learning_rate(0.01, 16, 16) == pytest.approx(0.01)
    assert scaled_learning_rate(0.01, 64, 16) == pytest.approx(0.04)
    assert scaled_learning_rate(0.02, 4, 16) == pytest.approx(0.005)
    with pytest.raises(ValueError):
        scaled_learning_rate(0.01, 0, 16)


def test_warmup_then_multistep_in_optimizer_steps():
    schedule = build_schedule(TRAINING, steps_per_epoch=100)
    assert schedule.milestones == (1600, 2200)
    assert schedule(0) == pytest.approx(0.001)
    assert schedule(250) == pytest.approx(0.001 + 0.999 * 0.5)
    assert schedule(500) == pytest.approx(1.0)
    assert schedule(1599) == pytest.approx(1.0)
    assert schedule(1600) == pytest.approx(0.1)
    assert schedule(2200) == pytest.approx(0.01)
    assert schedule(2599) == pytest.approx(0.01)


def test_warmup_takes_at_most_a_fifth_of_a_short_run():
    # 26 epochs of 10 steps: the 500-step default would cover the whole run; it is cut to 260 // 5 = 52 steps.
    schedule = build_schedule(TRAINING, steps_per_epoch=10)
    assert schedule.warmup_steps == 52
    assert schedule(26) == pytest.approx(0.001 + 0.999 * 0.5)
    assert schedule(52) == pytest.approx(1.0)
    assert build_schedule(TRAINING, steps_per_epoch=1000).warmup_steps == 500  # a long run keeps warmup_iters


def test_backbone_lr_factor_null_depends_on_pretrained_weights():
    auto = OmegaConf.merge(TRAINING, {"backbone_lr_factor": None})
    assert backbone_lr_factor(auto, pretrained=True) == pytest.approx(0.1)
    assert backbone_lr_factor(auto, pretrained=False) == pytest.approx(1.0)
    # An explicit value is used as given, pretrained or not.
    assert backbone_lr_factor(TRAINING, pretrained=False) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="backbone_lr_factor"):
        backbone_lr_factor(OmegaConf.merge(TRAINING, {"backbone_lr_factor": -1}), pretrained=False)


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 100.0, math.inf])
def test_clip_gradients_matches_torch_clip_grad_norm(max_norm):
    generator = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (4,), (2, 2, 3)]
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in shapes]
    expected = [torch.nn.Parameter(torch.zeros(shape)) for shape in shapes]
    frozen = torch.nn.Parameter(torch.zeros(2))  # no gradient: ignored, as torch ignores it
    for ours, theirs in zip(params, expected):
        ours.grad = torch.randn(ours.shape, generator=generator)
        theirs.grad = ours.grad.clone()
    norm = clip_gradients([*params, frozen], max_norm)
    expected_norm = torch.nn.utils.clip_grad_norm_(expected, max_norm)
    assert float(norm) == pytest.approx(float(expected_norm))
    for ours, theirs in zip(params, expected):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=0)
    total = float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params])))
    assert total == pytest.approx(min(float(norm), max_norm), rel=1e-5)
    assert frozen.grad is None


def test_clip_gradients_leaves_gradients_under_the_limit_untouched():
    param = torch.nn.Parameter(torch.zeros(3))
    param.grad = torch.tensor([3.0, 0.0, 4.0])
    grad = param.grad
    assert float(clip_gradients([param], 5.0)) == pytest.approx(5.0)
    assert param.grad is grad and param.grad.tolist() == [3.0, 0.0, 4.0]
    assert float(clip_gradients([param], 1.0)) == pytest.approx(5.0)
    torch.testing.assert_close(param.grad, torch.tensor([0.6, 0.0, 0.8]))


def test_cosine_decays_to_min_factor():
    cfg = OmegaConf.merge(TRAINING, {"lr_scheduler": "cosine", "warmup_iters": 0, "min_lr_factor": 0.05})
    schedule = build_schedule(cfg, steps_per_epoch=10)
    assert schedule(0) == pytest.approx(1.0)
    assert schedule(130) == pytest.approx(0.05 + 0.95 * 0.5)
    assert schedule(260) == pytest.approx(0.05)
    values = [schedule(s) for s in range(261)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="lr_scheduler"):
        build_schedule(OmegaConf.merge(TRAINING, {"lr_scheduler": "poly"}), steps_per_epoch=10)


def _steps_per_epoch(dataset, batch_size, world_size, accumulation):
    """What every process of a ``world_size`` run computes for its own shard."""
    per_rank = {build_train_loader(dataset, batch_size=batch_size, accumulation_steps=accumulation, seed=0,
                                   num_replicas=world_size, rank=rank, num_workers=0, group_factor=3)[2]
                for rank in range(world_size)}
    assert len(per_rank) == 1, "all processes must agree on the epoch length"
    return per_rank.pop()


class _Sizes(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def image_sizes(self):
        return [(128, 96)] * self.n


@pytest.mark.parametrize("num_images", [64, 70])
def test_schedule_identical_for_any_world_size_and_accumulation(num_images):
    """Global batch 8 as 1x8, 2x4, 4x2, 1x4 with 2 accumulation steps, 2x2x2: the same lr at every step."""
    dataset = _Sizes(num_images)
    layouts = [(8, 1, 1), (4, 2, 1), (2, 4, 1), (4, 1, 2), (2, 2, 2), (1, 2, 4)]
    schedules = []
    for batch, world, accumulation in layouts:
        steps = _steps_per_epoch(dataset, batch, world, accumulation)
        assert steps == num_images // 8
        lr = scaled_learning_rate(0.01, batch * world * accumulation, 16)
        model = torch.nn.Linear(2, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        cfg = OmegaConf.merge(TRAINING, {"warmup_iters": 5, "lr_milestones": [2, 3], "num_epochs": 4})
        scheduler = build_scheduler(optimizer, build_schedule(cfg, steps))
        trace = []
        for _ in range(4 * steps):
            trace.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        schedules.append(trace)
    assert all(trace == schedules[0] for trace in schedules)
    assert schedules[0][0] == pytest.approx(0.005 * 0.001)
    assert schedules[0][-1] == pytest.approx(0.005 * 0.01)


def test_scheduler_state_round_trips_with_weights_only(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = LRSchedule("multistep", total_steps=100, warmup_steps=10, warmup_factor=0.1, milestones=(50,))
    scheduler = build_scheduler(optimizer, schedule)
    for _ in range(55):
        optimizer.step()
        scheduler.step()
    torch.save(scheduler.state_dict(), tmp_path / "s.pt")
    restored = build_scheduler(torch.optim.SGD(model.parameters(), lr=0.1), schedule)
    restored.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert restored.last_epoch == 55
    assert restored.get_last_lr() == pytest.approx(scheduler.get_last_lr())


def test_optimizer_groups_backbone_factor_and_no_decay_on_norm_and_bias():
    model = build_model({"name": "custom_detector", "weights": None, "weights_backbone": None}, num_classes=3)
    optimizer = build_optimizer(model, lr=0.02, training=TRAINING, backbone_factor=0.1)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"backbone/decay", "backbone/no_decay", "head/decay", "head/no_decay"}
    assert groups["backbone/decay"]["lr"] == pytest.approx(0.002)
    assert groups["head/decay"]["lr"] == pytest.approx(0.02)
    assert groups["head/decay"]["weight_decay"] == pytest.approx(1e-4)
    assert groups["head/no_decay"]["weight_decay"] == 0.0
    assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.9
    norm_and_bias = {id(p) for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm))
                     for p in m.parameters(recurse=False)}
    norm_and_bias |= {id(p) for name, p in model.named_parameters() if name.endswith(".bias")}
    no_decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert no_decay == norm_and_bias
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == n_trainable
    assert not math.isnan(groups["head/decay"]["lr"])


def test_grouped_sampler_is_used_with_drop_last():
    # The engine's epoch length is floor(shard / batch): a short last batch would change BN statistics and
    # the per-process batch size between processes.
    dataset = _Sizes(10)
    loader, sampler, steps = build_train_loader(dataset, batch_size=4, accumulation_steps=1, seed=0,
                                                num_replicas=1, rank=0, num_workers=0, group_factor=3)
    assert isinstance(sampler.batch_sampler, GroupedBatchSampler)
    assert steps == 2 and len(sampler) == 2
