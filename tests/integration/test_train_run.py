"""One real ``python trainer/train.py`` run on the sample data: every run-directory output, then a rerun."""
from __future__ import annotations

import csv
import re

import pytest
import torch
import yaml

from train_runs import REPO, assert_ok, run_training, scalars, train_command


@pytest.fixture(scope="module")
def finished_run(sample_dataset_dir, tmp_path_factory):
    """Started in an empty directory without hydra.run.dir: the default outputs/DATE/TIME layout."""
    cwd = tmp_path_factory.mktemp("train_cwd")
    command = train_command(sample_dataset_dir, None, "training.checkpoint_every_steps=2",
                            "training.keep_checkpoints=2")
    result = run_training(command, cwd=cwd)
    assert_ok(result)
    run_dirs = list((cwd / "outputs").glob("*/*"))
    assert len(run_dirs) == 1, run_dirs
    return run_dirs[0], command, result


def test_default_run_dir_is_dated(finished_run):
    run_dir, _, _ = finished_run
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", run_dir.parent.name)
    assert re.fullmatch(r"\d{2}-\d{2}-\d{2}", run_dir.name)


def test_run_dir_holds_every_output(finished_run):
    run_dir, _, _ = finished_run
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "train.log", "classes.json", "metrics.csv",
                 "best_model.pth", "loss_curve.png", "map_curve.png"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").iterdir())
    log = (run_dir / "train.log").read_text()
    assert "processes 1 x batch 4 x accumulation 1 = global batch 4; lr = 0.01 x 4 / 16 = 0.0025" in log
    assert "epoch 2/2 | loss" in log and "training completed" in log
    assert yaml.safe_load((run_dir / "classes.json").read_text())["names"] == ["circle", "square", "triangle"]


def test_metrics_csv_one_row_per_epoch(finished_run):
    run_dir, _, _ = finished_run
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [int(r["global_step"]) for r in rows] == [4, 8]  # 18 train images // global batch 4
    for row in rows:
        for column in ("loss", "loss_classification", "lr", "mAP", "AP50", "AP75", "epoch_time_s", "images_per_s"):
            assert float(row[column]) >= 0.0, column
    assert float(rows[1]["loss"]) < float(rows[0]["loss"])


def test_checkpoints_keep_last_k_and_last_points_at_the_end(finished_run):
    run_dir, _, _ = finished_run
    checkpoints = run_dir / "checkpoints"
    kept = sorted(p.name for p in checkpoints.iterdir() if not p.is_symlink())
    assert kept == ["epoch0001-step000002", "epoch0002-step000000"]
    assert (checkpoints / "last").resolve().name == "epoch0002-step000000"
    assert {p.name for p in (checkpoints / "last").iterdir()} >= {
        "model.safetensors", "optimizer.bin", "random_states_0.pkl", "ema.pt", "lr_scheduler.pt",
        "trainer_state.json"}


def test_best_model_loads_with_weights_only(finished_run):
    run_dir, _, _ = finished_run
    checkpoint = torch.load(run_dir / "best_model.pth", weights_only=True)
    assert checkpoint["format_version"] == 1
    assert checkpoint["class_map"]["names"] == ["circle", "square", "triangle"]
    config = yaml.safe_load(checkpoint["config"])
    assert config["model"]["name"] == "custom_detector" and config["training"]["batch_size"] == 4
    assert checkpoint["model_config"]["base_channels"] == 8
    assert checkpoint["ema"] is not None and set(checkpoint["ema"]) == set(checkpoint["model"])
    assert 0.0 <= checkpoint["metrics"]["mAP"] <= 1.0 and checkpoint["epoch"] in (1, 2)
    from trainer.models import load_trained_model

    model, class_map, _ = load_trained_model(run_dir / "best_model.pth")
    assert class_map.names == ("circle", "square", "triangle") and not model.training


def test_tensorboard_holds_the_scalars(finished_run):
    run_dir, _, _ = finished_run
    losses = scalars(run_dir, "train/loss")
    assert [step for step, _ in losses] == list(range(1, 9))
    assert all(torch.isfinite(torch.tensor(value)) for _, value in losses)
    lrs = [value for _, value in scalars(run_dir, "train/lr")]
    assert lrs[0] == pytest.approx(0.0025 * 0.001) and lrs[3] == pytest.approx(0.0025)
    assert [step for step, _ in scalars(run_dir, "val/mAP")] == [4, 8]
    assert len(scalars(run_dir, "val/AP50")) == 2


def test_rerun_with_resume_auto_finds_the_finished_run(finished_run):
    run_dir, command, _ = finished_run
    before = (run_dir / "metrics.csv").read_text()
    result = run_training([*command, f"hydra.run.dir={run_dir}"], cwd=REPO)
    assert_ok(result)
    log = (run_dir / "train.log").read_text()
    assert "already finished (completed)" in log
    assert (run_dir / "metrics.csv").read_text() == before


def test_bad_data_is_a_clear_error_not_a_traceback(sample_dataset_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image_path": "data/missing.png", "bounding_box_annotations": []}\n')
    command = train_command(sample_dataset_dir, tmp_path / "run", f"dataset.train_jsonl={bad}")
    result = run_training(command)
    assert_ok(result, code=2)
    output = result.stdout + result.stderr
    assert f"{bad}:1: field 'image_path'" in output and "image not found" in output
    assert "Traceback" not in output
