"""Weights settings (null / DEFAULT / local path), head replacement, config errors and trained-checkpoint loading."""
from __future__ import annotations

import pytest
import torch
import yaml
from torchvision.models import MobileNet_V3_Large_Weights, WeightsEnum, mobilenet_v3_large
from torchvision.models.detection import FasterRCNN_MobileNet_V3_Large_FPN_Weights

from test_models_contract import MODEL_CONFIGS, model_config, synthetic_batch
from trainer.data.classes import ClassMap
from trainer.models import build_model, load_trained_model

MODEL_NAMES = sorted({model_config(c)["name"]: c for c in MODEL_CONFIGS}.values())


@pytest.mark.parametrize("config_name", MODEL_NAMES)
def test_weights_path_with_other_class_count_replaces_only_the_head(config_name, tmp_path, caplog):
    torch.manual_seed(0)
    source = build_model(model_config(config_name), num_classes=5)
    torch.save(source.state_dict(), tmp_path / "other_classes.pth")
    model = build_model(model_config(config_name, weights=str(tmp_path / "other_classes.pth")), num_classes=2)
    source_state, state = source.state_dict(), model.state_dict()
    replaced = sorted(k for k in state if state[k].shape != source_state[k].shape)
    assert replaced and all(k.startswith(model.head_prefixes) for k in replaced)
    assert all(k in caplog.text for k in replaced)
    for key in state:
        if key not in replaced and not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(state[key], source_state[key], rtol=0, atol=0, msg=key)


def test_weights_path_with_same_classes_reproduces_the_model(tmp_path):
    cfg = model_config("custom_detector", score_thresh=0.0)
    torch.manual_seed(0)
    source = build_model(cfg, 3).eval()
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    loaded = build_model({**cfg, "weights": str(tmp_path / "weights.pth")}, 3).eval()
    images, _ = synthetic_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images)[0]["boxes"], source(images)[0]["boxes"], rtol=0, atol=0)


def test_missing_weights_file_and_backbone_shape_mismatch_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_model(model_config("custom_detector", weights=str(tmp_path / "nowhere.pth")), 3)
    narrow = build_model(model_config("custom_detector", base_channels=8), 3)
    torch.save(narrow.state_dict(), tmp_path / "narrow.pth")
    with pytest.raises(ValueError, match=r"mismatch outside the class-dependent head.*backbone\.stem\.0\.0\.weight"):
        build_model(model_config("custom_detector", weights=str(tmp_path / "narrow.pth")), 3)
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        build_model(model_config("custom_detector", weights=str(tmp_path / "garbage.pth")), 3)


def test_backbone_weights_from_a_local_classifier_state_dict(tmp_path):
    torch.manual_seed(0)
    classifier = mobilenet_v3_large()
    torch.save(classifier.state_dict(), tmp_path / "mobilenet.pth")
    model = build_model(model_config("faster_rcnn", weights_backbone=str(tmp_path / "mobilenet.pth")), 3)
    torch.testing.assert_close(model.backbone.body["0"][0].weight, classifier.features[0][0].weight, rtol=0, atol=0)
    # Pretrained layout, as torchvision: frozen batch norm and only the top 3 of 6 stages trainable.
    assert type(model.backbone.body["0"][1]).__name__ == "FrozenBatchNorm2d"
    assert not model.backbone.body["0"][0].weight.requires_grad
    assert model.backbone.body["16"][0].weight.requires_grad


def test_default_weights_resolve_torchvision_enums_and_replace_the_coco_head(monkeypatch):
    requested = []
    coco_like = build_model(model_config("faster_rcnn"), num_classes=90).state_dict()  # 91 outputs, as COCO

    def fake_download(weights, *args, **kwargs):
        requested.append(weights)
        return coco_like

    monkeypatch.setattr(WeightsEnum, "get_state_dict", fake_download)
    model = build_model(model_config("faster_rcnn", weights="DEFAULT"), num_classes=3)
    assert requested == [FasterRCNN_MobileNet_V3_Large_FPN_Weights.DEFAULT]
    assert model.roi_heads.box_predictor.cls_score.out_features == 4
    torch.testing.assert_close(model.rpn.head.conv[0][0].weight, coco_like["rpn.head.conv.0.0.weight"])

    requested.clear()
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda weights, *a, **k: requested.append(weights)
                        or mobilenet_v3_large().state_dict())
    build_model(model_config("faster_rcnn", weights_backbone="DEFAULT"), num_classes=3)
    assert requested == [MobileNet_V3_Large_Weights.DEFAULT]


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="no_such_model"):
        build_model({"name": "no_such_model"}, 3)
    with pytest.raises(ValueError, match="min_sise"):
        build_model(model_config("custom_detector", min_sise=3), 3)
    with pytest.raises(ValueError, match="loss_typo"):
        build_model(model_config("custom_detector", loss_weights={"loss_typo": 1.0}), 3)
    with pytest.raises(ValueError, match="DEFAULT is not available"):
        build_model(model_config("effnet", weights="DEFAULT"), 3)
    with pytest.raises(ValueError, match="num_classes"):
        build_model(model_config("custom_detector"), 0)


def _write_checkpoint(path, model_cfg, model_state, ema_state):
    torch.save({"format_version": 1, "model": model_state, "ema": ema_state, "class_map": {"names": ["a", "b", "c"]},
                "config": yaml.safe_dump({"model": model_cfg, "seed": 7}), "model_config": model_cfg, "epoch": 3,
                "global_step": 30, "metrics": {"map": 0.5}}, path)


def test_load_trained_model_prefers_ema_and_restores_class_map_and_config(tmp_path):
    cfg = model_config("custom_detector", score_thresh=0.0)
    torch.manual_seed(0)
    raw = build_model(cfg, 3)
    torch.manual_seed(1)
    ema = build_model(cfg, 3)
    _write_checkpoint(tmp_path / "best_model.pth", cfg, raw.state_dict(), ema.state_dict())

    model, class_map, config = load_trained_model(tmp_path / "best_model.pth")
    assert not model.training and class_map == ClassMap(["a", "b", "c"]) and config["seed"] == 7
    torch.testing.assert_close(model.state_dict(), ema.state_dict())
    model, _, _ = load_trained_model(tmp_path / "best_model.pth", use_ema=False)
    torch.testing.assert_close(model.state_dict(), raw.state_dict())


def test_load_trained_model_keeps_the_pretrained_layout_without_downloading(tmp_path, monkeypatch):
    cfg = model_config("ssdlite", weights_backbone="DEFAULT")
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda weights, *a, **k: mobilenet_v3_large(
        norm_layer=lambda c: torch.nn.BatchNorm2d(c, eps=0.001, momentum=0.03)).state_dict())
    trained = build_model(cfg, 3)  # ImageNet backbone: full MobileNetV3 tail (unlike random init)

    def no_download(*args, **kwargs):
        raise AssertionError("restoring a checkpoint tried to download")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", no_download)
    _write_checkpoint(tmp_path / "best_model.pth", cfg, trained.state_dict(), None)
    model, _, _ = load_trained_model(tmp_path / "best_model.pth")
    torch.testing.assert_close(model.state_dict(), trained.state_dict())


def test_load_trained_model_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_trained_model(tmp_path / "missing.pth")
    torch.save({"model": {}}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="not a trainer checkpoint.*format_version"):
        load_trained_model(tmp_path / "partial.pth")
    cfg = model_config("custom_detector")
    _write_checkpoint(tmp_path / "other.pth", cfg, build_model({**cfg, "base_channels": 8}, 3).state_dict(), None)
    with pytest.raises(ValueError, match="other.pth.*does not fit"):
        load_trained_model(tmp_path / "other.pth")
