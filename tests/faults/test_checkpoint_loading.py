"""Checkpoints are plain data: every file the trainer writes loads with ``weights_only=True``, and a tampered file
(a pickle whose ``__reduce__`` runs code) is refused by every loader before any of its code runs."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from trainer.data.classes import ClassMap
from trainer.engine.checkpoint import CheckpointManager, checkpoint_name
from trainer.models import build_model, load_trained_model
from trainer.models.weights import read_state_dict

pytestmark = pytest.mark.faults

MODEL_CONFIG = {"name": "custom_detector", "weights": None, "weights_backbone": None, "min_size": 64,
                "max_size": 64, "base_channels": 8, "fpn_channels": 16}


class WritesMarker:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for any code a hostile checkpoint would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def best_model_payload(model) -> dict:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"format_version": 1, "model": state, "ema": {k: v.clone() for k, v in state.items()},
            "class_map": ClassMap(["circle", "square"]).to_dict(), "config": "seed: 1\n",
            "model_config": dict(MODEL_CONFIG), "epoch": 1, "global_step": 4, "metrics": {"mAP": 0.25}}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(MODEL_CONFIG, num_classes=2)


def test_best_model_loads_with_weights_only(model, tmp_path):
    path = tmp_path / "best_model.pth"
    torch.save(best_model_payload(model), path)
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == 1 and raw["metrics"] == {"mAP": 0.25}
    loaded, class_map, _ = load_trained_model(path)
    assert list(class_map.names) == ["circle", "square"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def tampered_payload(model, where: str, marker: Path):
    """A best_model payload with a code-running object at the top, among the weights, or in the metrics."""
    payload = best_model_payload(model)
    if where == "top":
        return WritesMarker(marker)
    if where == "metrics":
        payload["metrics"] = {"mAP": WritesMarker(marker)}
    else:
        payload[where][next(iter(payload[where]))] = WritesMarker(marker)
    return payload


@pytest.mark.parametrize("where", ["top", "model", "ema", "metrics"])
@pytest.mark.parametrize("container", ["torch.save", "plain pickle"])
def test_tampered_best_model_is_refused_and_its_code_never_runs(model, tmp_path, where, container):
    marker = tmp_path / "pwned"
    path = tmp_path / "best_model.pth"
    payload = tampered_payload(model, where, marker)
    if container == "torch.save":
        torch.save(payload, path)
    else:
        with path.open("wb") as out:
            pickle.dump(payload, out, protocol=2)  # the protocol torch.save uses
    assert not marker.exists()
    with pytest.raises(ValueError, match=r"weights_only=True") as info:
        load_trained_model(path)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match="weights_only=True"):
        read_state_dict(path, "model.weights")
    assert not marker.exists(), "the checkpoint's code ran"


def test_truncated_best_model_is_a_clear_error(model, tmp_path):
    path = tmp_path / "best_model.pth"
    torch.save(best_model_payload(model), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"cannot read checkpoint '{path}'"):
        load_trained_model(path)


@pytest.fixture
def training_checkpoint(tmp_path):
    """A real training checkpoint (Accelerate state + EMA + scheduler + trainer_state.json) of a tiny model."""
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net, optimizer = accelerator.prepare(net, optimizer)
    net(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    manager = CheckpointManager(accelerator, tmp_path / "checkpoints", keep_last=2)
    path = manager.save(checkpoint_name(0, 1), {"ema": {"decay": 0.9, "weight": torch.ones(2)},
                                                "lr_scheduler": {"last_epoch": 1}}, {"global_step": 1})
    yield manager, path
    AcceleratorState._reset_state(reset_partial_state=True)


def test_every_training_checkpoint_file_loads_with_weights_only(training_checkpoint):
    _, path = training_checkpoint
    tensor_files = [p for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    assert {p.name for p in tensor_files} >= {"optimizer.bin", "ema.pt", "lr_scheduler.pt", "random_states_0.pkl"}
    from accelerate.utils import load

    for file in tensor_files:
        load(file, map_location="cpu")  # accelerate's loader: weights_only=True plus numpy's RNG state types
    for file in (p for p in tensor_files if p.suffix == ".pt"):
        torch.load(file, weights_only=True)
    json.loads((path / "trainer_state.json").read_text())


@pytest.mark.parametrize("victim", ["optimizer.bin", "ema.pt", "lr_scheduler.pt"])
def test_tampered_training_checkpoint_is_refused_on_resume(training_checkpoint, tmp_path, victim):
    manager, path = training_checkpoint
    marker = tmp_path / "pwned"
    torch.save({"state": WritesMarker(marker)}, path / victim)
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        manager.load(path, ["ema", "lr_scheduler"])
    assert not marker.exists(), f"resuming from a tampered {victim} ran its code"


def test_tampered_rng_state_never_runs_its_code(training_checkpoint, tmp_path):
    """Accelerate loads ``random_states_<rank>.pkl`` with weights_only=True too, but treats any failure as
    "Could not load random states" (logged at INFO) and continues: the code never runs, the resume is not exact."""
    manager, path = training_checkpoint
    marker = tmp_path / "pwned"
    torch.save({"random_state": WritesMarker(marker)}, path / "random_states_0.pkl")
    state, _ = manager.load(path, [])
    assert state == {"global_step": 1} and not marker.exists()


def test_tampered_safetensors_weights_are_refused(training_checkpoint, tmp_path):
    manager, path = training_checkpoint
    weights = path / "model.safetensors"
    assert weights.is_file()
    weights.write_bytes(b"\xff" * 16 + weights.read_bytes()[16:])  # a header length no file can have
    with pytest.raises(Exception, match="(?i)header|safetensor|deserializ"):
        manager.load(path, [])
