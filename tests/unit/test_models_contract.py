"""Every registered detector honours the one contract (train -> weighted losses, eval -> input-pixel boxes)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import torchvision.models._api
from trainer.models import available_models, build_model, parameter_groups

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
MODEL_CONFIGS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
SLOW_MODELS = {"retinanet", "fcos"}  # ResNet-50: several seconds per step on 2 CPU cores
NUM_CLASSES = 3


def model_config(config_name: str, **overrides) -> dict:
    """``configs/model/<config_name>.yaml`` composed by Hydra, shrunk to tiny inputs for CPU tests."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = OmegaConf.to_container(compose(overrides=[f"+model={config_name}"])["model"], resolve=True)
    if "min_size" in cfg:
        cfg.update(min_size=96, max_size=128)
    cfg.update(overrides)
    return cfg


def params(slow_ones=SLOW_MODELS):
    return [pytest.param(name, marks=pytest.mark.slow) if name in slow_ones else name for name in MODEL_CONFIGS]


def synthetic_batch():
    """Two images of different sizes with bright rectangles where the boxes are."""
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 128, generator=generator) * 0.2, torch.rand(3, 120, 100, generator=generator) * 0.2]
    images[0][:, 20:60, 30:80] = 0.9
    images[1][:, 40:90, 10:50] = 0.6
    targets = [{"boxes": torch.tensor([[30.0, 20.0, 80.0, 60.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 40.0, 50.0, 90.0]]), "labels": torch.tensor([3])}]
    return images, targets


def test_every_registered_model_has_a_config():
    names = set()
    for config_name in MODEL_CONFIGS:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            names.add(compose(overrides=[f"+model={config_name}"])["model"]["name"])
    assert names == set(available_models())
    assert {"faster_rcnn", "ssdlite", "effnet", "custom_detector", "retinanet", "fcos"} <= names


@pytest.mark.parametrize("config_name", params())
def test_train_step_returns_finite_named_losses_scaled_by_loss_weights(config_name):
    torch.manual_seed(0)
    model = build_model(model_config(config_name), NUM_CLASSES).train()
    images, targets = synthetic_batch()
    torch.manual_seed(1)
    losses = model(images, targets)
    assert set(losses) == set(model.loss_terms)
    assert all(loss.ndim == 0 and math.isfinite(loss.item()) for loss in losses.values())
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    first, *others = model.loss_terms
    model.set_loss_weights({first: 2.0, **{term: 0.5 for term in others}})
    torch.manual_seed(1)  # the same proposal / negative sampling as above
    weighted = model(images, targets)
    torch.testing.assert_close(weighted[first], 2.0 * losses[first])
    for term in others:
        torch.testing.assert_close(weighted[term], 0.5 * losses[term])


@pytest.mark.parametrize("config_name", params())
def test_eval_output_contract_on_two_image_sizes(config_name):
    torch.manual_seed(0)
    model = build_model(model_config(config_name, score_thresh=0.0), NUM_CLASSES).eval()
    images, _ = synthetic_batch()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2
    assert sum(len(out["boxes"]) for out in outputs) > 0
    for image, out in zip(images, outputs):
        height, width = image.shape[-2:]
        assert set(out) == {"boxes", "scores", "labels"}
        boxes, scores, labels = out["boxes"], out["scores"], out["labels"]
        assert boxes.dtype == torch.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
        assert scores.shape == labels.shape == boxes.shape[:1]
        assert labels.dtype == torch.int64
        assert ((labels >= 1) & (labels <= NUM_CLASSES)).all()
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()


@pytest.mark.parametrize("config_name", params())
def test_state_dict_round_trip_gives_identical_outputs(config_name, tmp_path):
    cfg = model_config(config_name, score_thresh=0.0)
    torch.manual_seed(0)
    trained = build_model(cfg, NUM_CLASSES).eval()
    torch.save(trained.state_dict(), tmp_path / "state.pth")
    torch.manual_seed(1)
    fresh = build_model(cfg, NUM_CLASSES).eval()
    fresh.load_state_dict(torch.load(tmp_path / "state.pth", weights_only=True))
    images, _ = synthetic_batch()
    with torch.no_grad():
        expected, actual = trained(images), fresh(images)
    for want, got in zip(expected, actual):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)


@pytest.mark.parametrize("config_name", params(set(MODEL_CONFIGS) - {"custom_detector"}))
def test_overfits_one_small_batch(config_name):
    torch.manual_seed(0)
    model = build_model(model_config(config_name), NUM_CLASSES).train()
    images, targets = synthetic_batch()
    # Random ResNet-50s with batch statistics from two images diverge at 1e-3.
    lr = 1e-4 if config_name in SLOW_MODELS else 1e-3
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    history = []
    for _ in range(15):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    # Mean of the last steps: Faster R-CNN's sampled proposals make single steps noisy.
    assert sum(history[-3:]) / 3 < 0.6 * history[0], history


def test_null_weights_never_download(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("a model with weights: null tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_download, raising=False)
    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", no_download)
    for config_name in MODEL_CONFIGS:
        cfg = model_config(config_name)
        assert cfg["weights"] is None and cfg["weights_backbone"] is None
        build_model(cfg, NUM_CLASSES)


@pytest.mark.parametrize("config_name", MODEL_CONFIGS)
def test_parameter_groups_partition_trainable_parameters(config_name):
    model = build_model(model_config(config_name), NUM_CLASSES)
    groups = parameter_groups(model)
    grouped = [p for part in groups.values() for params in part.values() for p in params]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len({id(p) for p in grouped}) == len(trainable)
    assert {id(p) for p in grouped} == {id(p) for p in trainable}
    assert groups["backbone"]["decay"] and groups["head"]["decay"] and groups["head"]["no_decay"]
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith(model.backbone_prefix) for part in groups["backbone"].values() for p in part)
    assert all(p.ndim == 1 for part in groups.values() for p in part["no_decay"])
    biases = {id(p) for n, p in model.named_parameters() if n.endswith(".bias") and p.requires_grad}
    assert biases <= {id(p) for part in groups.values() for p in part["no_decay"]}


@pytest.mark.parametrize("config_name", MODEL_CONFIGS)
def test_freeze_backbone_and_trainable_layers(config_name):
    frozen = build_model(model_config(config_name, freeze_backbone=True), NUM_CLASSES)
    assert not parameter_groups(frozen)["backbone"]["decay"]
    assert any(p.requires_grad for p in frozen.parameters())  # the head still trains
    zero_layers = build_model(model_config(config_name, trainable_backbone_layers=0), NUM_CLASSES)
    assert [n for n, p in zero_layers.named_parameters() if p.requires_grad] == \
           [n for n, p in frozen.named_parameters() if p.requires_grad]
    partial = build_model(model_config(config_name, trainable_backbone_layers=1), NUM_CLASSES)
    trainable = build_model(model_config(config_name), NUM_CLASSES)

    def backbone_trainable(model):
        return sum(p.requires_grad for n, p in model.named_parameters() if n.startswith(model.backbone_prefix))

    assert 0 < backbone_trainable(partial) < backbone_trainable(trainable)
    with pytest.raises(ValueError, match="trainable_backbone_layers"):
        build_model(model_config(config_name, trainable_backbone_layers=99), NUM_CLASSES)
