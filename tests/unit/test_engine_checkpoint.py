"""Atomic checkpoints: complete or absent, ``last`` always loadable, pruning, resume resolution, write errors."""
from __future__ import annotations

import json
import os

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from trainer.engine import checkpoint as ckpt
from trainer.engine.checkpoint import (CheckpointManager, CheckpointWriteError, atomic_torch_save,
                                       checkpoint_name, find_resume_checkpoint)


@pytest.fixture
def setup():
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, optimizer = accelerator.prepare(model, optimizer)
    yield accelerator, model, optimizer
    AcceleratorState._reset_state(reset_partial_state=True)


def _train_step(model, optimizer):
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_save_load_round_trip_and_last_link(setup, tmp_path):
    accelerator, model, optimizer = setup
    manager = CheckpointManager(accelerator, tmp_path / "checkpoints", keep_last=2)
    _train_step(model, optimizer)
    saved = manager.save(checkpoint_name(0, 1), {"extra": {"value": torch.tensor([1.5])}}, {"global_step": 1})
    assert saved.name == "epoch0000-step000001"
    assert (tmp_path / "checkpoints" / "last").resolve() == saved
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng_after_save = torch.get_rng_state()
    _train_step(model, optimizer)  # moves weights, optimizer momentum and the RNG on
    state, extras = manager.load(tmp_path / "checkpoints" / "last", ["extra", "missing"])
    assert state == {"global_step": 1}
    assert set(extras) == {"extra"} and extras["extra"]["value"].item() == 1.5
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k])
    assert torch.equal(torch.get_rng_state(), rng_after_save)


def test_keeps_last_k_and_ignores_half_written(setup, tmp_path):
    accelerator, model, optimizer = setup
    root = tmp_path / "checkpoints"
    manager = CheckpointManager(accelerator, root, keep_last=2)
    for step in range(1, 5):
        manager.save(checkpoint_name(0, step), {}, {"global_step": step})
    names = sorted(p.name for p in root.iterdir() if not p.is_symlink())
    assert names == ["epoch0000-step000003", "epoch0000-step000004"]
    # A save killed half-way leaves only a .tmp- directory: resume still finds the last complete one.
    (root / ".tmp-epoch0000-step000005").mkdir()
    (root / ".tmp-epoch0000-step000005" / "model.safetensors").write_bytes(b"partial")
    assert find_resume_checkpoint("auto", tmp_path) == root / "epoch0000-step000004"
    manager.save(checkpoint_name(0, 6), {}, {"global_step": 6})
    assert not (root / ".tmp-epoch0000-step000005").exists()


def test_write_error_keeps_previous_checkpoint(setup, tmp_path, monkeypatch):
    accelerator, model, optimizer = setup
    root = tmp_path / "checkpoints"
    manager = CheckpointManager(accelerator, root, keep_last=2)
    first = manager.save(checkpoint_name(0, 1), {"extra": {"a": torch.zeros(1)}}, {"global_step": 1})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    with pytest.raises(CheckpointWriteError, match="No space left on device.*previous checkpoint is intact"):
        manager.save(checkpoint_name(0, 2), {"extra": {"a": torch.ones(1)}}, {"global_step": 2})
    monkeypatch.undo()
    assert find_resume_checkpoint("auto", tmp_path) == first
    state, extras = manager.load(first, ["extra"])
    assert state["global_step"] == 1 and extras["extra"]["a"].item() == 0.0


def test_find_resume_checkpoint_variants(tmp_path):
    run = tmp_path / "run"
    assert find_resume_checkpoint("auto", run) is None
    assert find_resume_checkpoint(None, run) is None
    assert find_resume_checkpoint("never", run) is None
    target = run / "checkpoints" / "epoch0001-step000000"
    target.mkdir(parents=True)
    (target / ckpt.TRAINER_STATE_FILE).write_text(json.dumps({}))
    os.symlink(target.name, run / "checkpoints" / "last")
    assert find_resume_checkpoint("auto", run) == target
    assert find_resume_checkpoint(str(run), tmp_path / "elsewhere") == target
    assert find_resume_checkpoint(str(target), tmp_path / "elsewhere") == target
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        find_resume_checkpoint(str(tmp_path / "nothing"), run)


def test_atomic_torch_save_replaces_whole_file(tmp_path):
    path = tmp_path / "best_model.pth"
    atomic_torch_save({"v": torch.tensor([1])}, path)
    atomic_torch_save({"v": torch.tensor([2])}, path)
    assert torch.load(path, weights_only=True)["v"].item() == 2
    assert [p.name for p in tmp_path.iterdir()] == ["best_model.pth"]
