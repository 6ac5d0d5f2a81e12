"""Seeded resumable data order, run-directory resolver, tracker and mixed-precision settings, metrics.csv."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from trainer.engine.data import ResumableBatchSampler, SeededAugmentation
from trainer.data.samplers import GroupedBatchSampler
from trainer.engine.loop import resolve_mixed_precision
from trainer.engine.reporting import plot_curves, write_metrics_csv
from trainer.engine.run_dir import main_rank_only, register_resolvers
from trainer.engine.trackers import tracker_names


def _sampler(rank=0, world=1):
    sizes = [(128, 96)] * 20 + [(96, 128)] * 12
    return ResumableBatchSampler(GroupedBatchSampler(sizes, 3, seed=7, num_replicas=world, rank=rank,
                                                     drop_last=True), batches_per_epoch=4)


def test_resumed_epoch_yields_the_remaining_batches_exactly():
    full = _sampler()
    full.set_epoch(2)
    batches = list(full)
    assert len(batches) == 4 and all(epoch == 2 for batch in batches for _, epoch in batch)
    resumed = _sampler()
    resumed.set_epoch(2, skip=3)
    assert list(resumed) == batches[3:] and len(resumed) == 1
    other_epoch = _sampler()
    other_epoch.set_epoch(3)
    assert list(other_epoch) != batches


class _RandomNoise(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, index):
        return torch.rand(3)


def test_augmentation_seed_depends_on_sample_not_on_order_or_global_rng():
    dataset = SeededAugmentation(_RandomNoise(), seed=1)
    first = dataset[(4, 0)]
    torch.rand(100)  # whatever happened before (another worker, a resumed run) does not matter
    assert torch.equal(dataset[(4, 0)], first)
    assert not torch.equal(dataset[(4, 1)], first)
    assert not torch.equal(dataset[(5, 0)], first)
    state = torch.get_rng_state()
    dataset[(3, 0)]
    assert torch.equal(torch.get_rng_state(), state), "the global RNG (model randomness) is left untouched"


def test_main_rank_only_resolver(monkeypatch):
    register_resolvers()
    cfg = OmegaConf.create({"dir": "${main_rank_only:'outputs/x',.}", "sub": "${main_rank_only:.hydra}"})
    monkeypatch.delenv("RANK", raising=False)
    assert (cfg.dir, cfg.sub) == ("outputs/x", ".hydra")
    monkeypatch.setenv("RANK", "3")
    assert main_rank_only("outputs/x", ".") == "."
    assert (cfg.dir, cfg.sub) == (".", None)


@pytest.mark.parametrize("setting,expected", [
    ("tensorboard", ["tensorboard"]), ("wandb", ["wandb"]), ("both", ["tensorboard", "wandb"]),
    (["wandb", "tensorboard"], ["wandb", "tensorboard"]), ("none", []), (None, []),
])
def test_tracker_names(setting, expected):
    assert tracker_names(setting) == expected


def test_unknown_tracker_is_refused():
    with pytest.raises(ValueError, match="mlflow"):
        tracker_names("mlflow")


def test_fp16_falls_back_to_bf16_without_gpu(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_mixed_precision("fp16") == "bf16"
    assert "bf16" in caplog.text
    assert resolve_mixed_precision("bf16") == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert resolve_mixed_precision(None) == "bf16"
    with pytest.raises(ValueError, match="mixed_precision"):
        resolve_mixed_precision("fp8x")


def test_metrics_csv_has_one_row_per_epoch_and_plots(tmp_path):
    history = [{"epoch": e, "global_step": 4 * e, "lr": 0.01, "loss": 2.0 / e, "loss_cls": 1.0 / e,
                "mAP": 0.1 * e if e % 2 == 0 else None, "AP50": 0.2, "AP75": 0.05, "epoch_time_s": 1.0,
                "images_per_s": 10.0, "nonfinite_steps_skipped": 0} for e in (1, 2, 3)]
    write_metrics_csv(history, tmp_path / "metrics.csv")
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["mAP"] == "" and float(rows[1]["mAP"]) == pytest.approx(0.2)
    assert list(rows[0])[:5] == ["epoch", "global_step", "lr", "loss", "loss_cls"]
    written = plot_curves(history, tmp_path)
    assert [p.name for p in written] == ["loss_curve.png", "map_curve.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)


@pytest.mark.parametrize("name,processes", [("cpu_2proc", 2), ("gpu_1", 1), ("gpu_8", 8), ("multi_node", 16)])
def test_accelerate_launch_configs_parse(name, processes):
    import yaml
    from accelerate.commands.config.config_args import ClusterConfig

    path = Path(__file__).resolve().parents[2] / "launch" / "accelerate" / f"{name}.yaml"
    config = ClusterConfig(**yaml.safe_load(path.read_text()))
    assert config.num_processes == processes
    assert config.distributed_type in ("NO", "MULTI_GPU")
