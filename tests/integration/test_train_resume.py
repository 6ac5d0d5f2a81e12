"""Interrupted runs (SIGKILL mid-epoch; SIGTERM) resume with ``resume=auto`` and end with the same weights as an
uninterrupted run. Measured on the CPU with one thread per process: bitwise equal (model, EMA, momentum)."""
from __future__ import annotations

import signal

import pytest
import torch

from train_runs import (assert_ok, final_weights, last_state, run_training, start_training, stop, train_command,
                        wait_for_checkpoint)

pytestmark = pytest.mark.slow
# Augmentation on (per-sample seeded), checkpoints every 2 of the 4 steps of each epoch.
SETTINGS = ("dataset.augmentation=default", "training.checkpoint_every_steps=2", "training.lr_milestones=[1]")


@pytest.fixture(scope="module")
def uninterrupted(sample_dataset_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    assert_ok(run_training(train_command(sample_dataset_dir, run_dir, *SETTINGS)))
    return run_dir


def _assert_same_weights(run_dir, reference):
    got, expected = final_weights(run_dir), final_weights(reference)
    assert got.keys() == expected.keys()
    different = [name for name in expected if not torch.equal(got[name], expected[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(sample_dataset_dir, tmp_path, uninterrupted):
    command = train_command(sample_dataset_dir, tmp_path, *SETTINGS)
    process = start_training(command)
    try:
        # The mid-epoch checkpoint of the second epoch: killed with half of that epoch unsaved.
        wait_for_checkpoint(process, tmp_path, lambda s: s["epoch"] == 1 and s["step_in_epoch"] == 2)
    finally:
        stop(process, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    assert last_state(tmp_path)["finished"] is None
    result = run_training(command)  # resume=auto is the default
    assert_ok(result)
    log = (tmp_path / "train.log").read_text()
    assert "resumed from" in log and "epoch 2, step 2 of 4" in log
    _assert_same_weights(tmp_path, uninterrupted)
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 3  # header + one row per epoch, no duplicate


def test_sigterm_checkpoints_exits_75_and_resumes(sample_dataset_dir, tmp_path, uninterrupted):
    command = train_command(sample_dataset_dir, tmp_path, *SETTINGS)
    process = start_training(command)
    try:
        wait_for_checkpoint(process, tmp_path, lambda s: s["global_step"] >= 2)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        stop(process)
    assert process.returncode == 75, output[-3000:]
    state = last_state(tmp_path)
    assert state["finished"] is None and state["global_step"] >= 3  # written at the step boundary after the signal
    assert "stopping on SIGTERM" in (tmp_path / "train.log").read_text()
    assert_ok(run_training(command))
    _assert_same_weights(tmp_path, uninterrupted)
