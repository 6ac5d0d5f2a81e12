"""Every registered architecture exports to ONNX and matches PyTorch in onnxruntime, at batch 1 and batch 2.

The models are random (no weights can be downloaded here) but given data-dependent BatchNorm statistics: a freshly
initialised network in eval mode gives near-identical scores, and the order of tied detections is arbitrary, so
comparing it would test tie-breaking, not the export.
"""
from __future__ import annotations

from pathlib import Path
import numpy as np
import onnx
import pytest
import torch
import yaml

from trainer.data.builder import build_datasets
from trainer.data.dataset import collate_fn
from trainer.data.images import read_image
from trainer.deploy.parity import measure_parity
from trainer.deploy.onnx_export import export_onnx
from trainer.deploy.onnx_runtime import OnnxPredictor
from trainer.models import available_models, build_model

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_DETECTIONS = 100
# Measured at these input sizes (128-320 px) with these random weights: largest box difference 0.013 px
# (retinanet: random box regressors give large deltas, amplified by exp() in box decoding), 0.002 px (ssdlite),
# < 0.001 px for the others; score differences <= 4e-5 (ssdlite). The same as the exporter's default
# (box_tolerance_px in configs/export.yaml).
BOX_TOLERANCE_PX = 0.05
SCORE_TOLERANCE = 1e-4
# Small inputs keep the ResNet-50 models affordable on a CPU; a low score threshold keeps detections to compare.
SMALL = {
    "custom_detector": {"min_size": 96, "max_size": 128, "base_channels": 8, "fpn_channels": 16},
    "faster_rcnn": {"min_size": 128, "max_size": 160},
    "ssdlite": {},  # fixed 320x320 inside the model
    "effnet": {"min_size": 128, "max_size": 128, "fpn_channels": 64},
    "retinanet": {"min_size": 128, "max_size": 160},
    "fcos": {"min_size": 128, "max_size": 160},
}
SLOW = {"effnet", "retinanet", "fcos"}  # > 30 s each on 2 CPU cores


def test_every_registered_model_is_covered():
    assert set(SMALL) == set(available_models())


@pytest.fixture(scope="module")
def training_data(sample_dataset_dir):
    return build_datasets({"dataset_dir": str(sample_dataset_dir), "val_split": 0.0, "augmentation": "none"}).train


def calibrate_batch_norm(model: torch.nn.Module, dataset, count: int = 4) -> None:
    """Running BatchNorm statistics from ``count`` training images (one train-mode forward, no weight update)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over what it sees
    images, targets = collate_fn([dataset[i] for i in range(count)])
    targets = [{"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"]} for t in targets]
    model.train()
    with torch.no_grad():
        model(list(images), targets)
    model.eval()


def prepared_model(name: str, dataset) -> torch.nn.Module:
    config = yaml.safe_load((REPO_ROOT / "configs" / "model" / f"{name}.yaml").read_text())
    config.update(SMALL[name], score_thresh=0.001)
    torch.manual_seed(0)
    model = build_model(config, dataset.class_map.num_classes)
    calibrate_batch_norm(model, dataset)
    return model


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in SMALL])
def test_onnx_runtime_matches_pytorch(name, training_data, tmp_path):
    model = prepared_model(name, training_data)
    images = [read_image(record.image_path) for record in training_data.records[:2]]
    # Traced on a crop: parity at the images' own size also shows that no input size was frozen into the graph.
    path = export_onnx(model, tmp_path / f"{name}.onnx", images[0][:, :72, :100], max_detections=MAX_DETECTIONS)
    onnx.checker.check_model(str(path), full_check=True)
    predictor = OnnxPredictor(path)

    location, score, category = predictor.run(np.stack([image.numpy() for image in images]))
    assert location.shape == (2, MAX_DETECTIONS, 4)
    assert score.shape == category.shape == (2, MAX_DETECTIONS)
    for batch_size in (1, 2):
        report = measure_parity(model, predictor, images, batch_size, MAX_DETECTIONS)
        assert report.reference_detections > 0, f"{name}: no detections to compare"
        assert report.category_agreement == 1.0, report.describe()
        assert report.max_box_diff_px <= BOX_TOLERANCE_PX, report.describe()
        assert report.max_score_diff <= SCORE_TOLERANCE, report.describe()
