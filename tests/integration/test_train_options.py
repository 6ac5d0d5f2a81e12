"""bf16 autocast on the CPU, W&B offline next to TensorBoard, non-finite losses, report_fn, early stopping."""
from __future__ import annotations

import csv
import math

import pytest
import torch
from accelerate.state import AcceleratorState
from hydra import compose, initialize_config_dir

from train_runs import REPO, TINY, assert_ok, data_args, final_weights, last_state, run_training, train_command
from trainer.engine import TrainingDiverged, train
from trainer.engine import loop as engine_loop
from trainer.engine.run_dir import register_resolvers


def test_bf16_autocast_trains_on_cpu(sample_dataset_dir, tmp_path):
    result = run_training(train_command(sample_dataset_dir, tmp_path, "training.mixed_precision=bf16",
                                        "training.num_epochs=1"))
    assert_ok(result)
    log = (tmp_path / "train.log").read_text()
    assert "mixed precision bf16" in log
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert len(rows) == 1 and math.isfinite(float(rows[0]["loss"]))


def test_wandb_offline_and_tensorboard_together(sample_dataset_dir, tmp_path):
    result = run_training(train_command(sample_dataset_dir, tmp_path, "logger=both", "training.num_epochs=1",
                                        "wandb.project=engine-test", "wandb.name=tiny", "wandb.group=ci"))
    assert_ok(result)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path / "wandb").iterdir()) if (tmp_path / "wandb").exists() else "no wandb/"
    assert list(runs[0].glob("run-*.wandb")), "the offline run has no data file"
    assert any((tmp_path / "tensorboard").iterdir())


# ---------------------------------------------------------------------------- in-process runs
@pytest.fixture
def compose_cfg(sample_dataset_dir):
    register_resolvers()

    def make(*overrides):
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
            return compose("train", overrides=[*TINY, *data_args(sample_dataset_dir), *overrides])

    yield make
    AcceleratorState._reset_state(reset_partial_state=True)


def _poison_losses(monkeypatch, bad_calls):
    """Make the model's training losses NaN on the given (1-based) forward calls."""
    build = engine_loop.build_model
    calls = {"n": 0}

    def build_poisoned(model_cfg, num_classes):
        model = build(model_cfg, num_classes)

        def hook(module, args, output):
            if not module.training:
                return output
            calls["n"] += 1
            if bad_calls(calls["n"]):
                return {name: value * float("nan") for name, value in output.items()}
            return output

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(engine_loop, "build_model", build_poisoned)


def test_nonfinite_steps_are_skipped_and_counted_and_report_fn_called(compose_cfg, tmp_path, monkeypatch):
    _poison_losses(monkeypatch, lambda n: n in (2, 3))
    reports = []
    result = train(compose_cfg("training.max_consecutive_nonfinite=3"), run_dir=tmp_path,
                   report_fn=lambda epoch, metrics, ckpt: reports.append((epoch, metrics["mAP"], ckpt)))
    assert result["status"] == "completed" and result["nonfinite_steps_skipped"] == 2
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(r["nonfinite_steps_skipped"]) for r in rows] == [2, 2]
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    assert [epoch for epoch, _, _ in reports] == [1, 2]
    assert all((ckpt / "trainer_state.json").is_file() for _, _, ckpt in reports)
    assert all(torch.isfinite(v).all() for v in final_weights(tmp_path).values() if v.is_floating_point())


def test_persistent_nonfinite_loss_stops_with_last_good_checkpoint(compose_cfg, tmp_path, monkeypatch):
    _poison_losses(monkeypatch, lambda n: n >= 3)
    cfg = compose_cfg("training.max_consecutive_nonfinite=2", "training.checkpoint_every_steps=2")
    with pytest.raises(TrainingDiverged, match="non-finite for 2 consecutive optimizer steps.*last good checkpoint"):
        train(cfg, run_dir=tmp_path)
    state = last_state(tmp_path)
    assert state["global_step"] == 2 and state["nonfinite_total"] == 0
    assert all(torch.isfinite(v).all() for v in final_weights(tmp_path).values() if v.is_floating_point())


def test_early_stopping_after_patience(compose_cfg, tmp_path):
    # With lr 0 the weights (and mAP) never change: the second validation is not an improvement.
    cfg = compose_cfg("training.num_epochs=4", "training.best_metric=mAP", "training.best_metric_mode=max",
                      "training.early_stopping_patience=1", "training.learning_rate=0.0")
    result = train(cfg, run_dir=tmp_path)
    assert result["status"] == "early_stopped" and result["epochs"] == 2
    assert last_state(tmp_path)["finished"] == "early_stopped"


def test_validation_loss_is_logged_and_leaves_training_unchanged(compose_cfg, tmp_path):
    with_loss = train(compose_cfg("training.num_epochs=1", "training.val_loss=true"), run_dir=tmp_path / "with")
    AcceleratorState._reset_state(reset_partial_state=True)
    without = train(compose_cfg("training.num_epochs=1"), run_dir=tmp_path / "without")
    assert with_loss["status"] == without["status"] == "completed"

    rows = list(csv.DictReader((tmp_path / "with" / "metrics.csv").open()))
    assert "val_loss" in rows[0] and math.isfinite(float(rows[0]["val_loss"])) and float(rows[0]["val_loss"]) > 0
    assert "val_loss" not in next(csv.DictReader((tmp_path / "without" / "metrics.csv").open()))
    # Measuring it runs the model in train mode: BatchNorm statistics and the RNG stream must not move.
    a = torch.load(tmp_path / "with" / "best_model.pth", weights_only=True)
    b = torch.load(tmp_path / "without" / "best_model.pth", weights_only=True)
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key]), key
