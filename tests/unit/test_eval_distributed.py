"""Prediction sharding, merging by image id, mapping back to original pixels, model state handling."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from accelerate import Accelerator
from torchvision.transforms import v2 as T

from trainer.data.builder import build_eval_dataset
from trainer.data.classes import ClassMap
from trainer.evaluation import evaluate_model
from trainer.evaluation.coco import build_coco_ground_truth
from trainer.evaluation.distributed import merge_predictions, predict_shard
from trainer.models import build_model

CLASS_MAP = ClassMap(["circle", "square", "triangle"])
MODEL_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "model" / "custom_detector.yaml"


def _key(image: torch.Tensor) -> str:
    return hashlib.sha1(image.numpy().tobytes()).hexdigest()


class Oracle:
    """A predictor that answers each image with its ground truth in the returned image's pixels."""

    def __init__(self, dataset):
        self.answers = {}
        for index in range(len(dataset)):
            image, target = dataset[index]
            self.answers[_key(image)] = {"boxes": target["boxes"].as_subclass(torch.Tensor).clone(),
                                         "scores": torch.linspace(0.9, 0.5, len(target["labels"])),
                                         "labels": target["labels"].clone()}
        self.calls = 0

    def __call__(self, images):
        self.calls += 1
        return [self.answers[_key(image)] for image in images]


@pytest.fixture(scope="module")
def all_images(sample_dataset_dir):
    return build_eval_dataset(sample_dataset_dir / "dataset.jsonl", CLASS_MAP)[0]


def test_oracle_predictions_score_one(all_images):
    oracle = Oracle(all_images)
    metrics, predictions = evaluate_model(oracle, all_images, Accelerator(cpu=True), batch_size=5)
    assert sorted(predictions) == list(range(len(all_images)))
    assert oracle.calls == -(-len(all_images) // 5)  # batched
    assert metrics["stats"]["AP"] == pytest.approx(1.0) and metrics["stats"]["AR100"] == pytest.approx(1.0)
    assert metrics["num_images"] == len(all_images)


def test_predictions_are_mapped_back_to_original_pixels(sample_dataset_dir):
    # An evaluation transform that halves the image: the predictor sees 64x48 and answers in those pixels.
    halved = build_eval_dataset(sample_dataset_dir / "dataset.jsonl", CLASS_MAP,
                                transforms=T.Compose([T.ToImage(), T.Resize((48, 64)), T.ToDtype(torch.float32, scale=True)]))[0]
    assert halved[0][0].shape[-2:] == (48, 64)
    metrics, predictions = evaluate_model(Oracle(halved), halved, Accelerator(cpu=True), batch_size=4)
    gt = build_coco_ground_truth(halved.records, CLASS_MAP)
    first = [a["bbox"] for a in gt["annotations"] if a["image_id"] == 0]
    boxes = predictions[0]["boxes"]
    np.testing.assert_allclose(boxes[:, 2:] - boxes[:, :2], np.array(first)[:, 2:], rtol=1e-5)
    np.testing.assert_allclose(boxes[:, :2], np.array(first)[:, :2], rtol=1e-5, atol=1e-4)
    assert metrics["stats"]["AP"] == pytest.approx(1.0)


def test_model_is_evaluated_in_eval_mode_and_restored(sample_dataset_dir):
    val_dataset = build_eval_dataset(sample_dataset_dir / "val.jsonl", CLASS_MAP)[0]
    config = yaml.safe_load(MODEL_CONFIG.read_text())
    config.update(min_size=96, max_size=128, base_channels=8, fpn_channels=16)
    torch.manual_seed(0)
    model = build_model(config, CLASS_MAP.num_classes).train()
    metrics, predictions = evaluate_model(model, val_dataset, Accelerator(cpu=True), batch_size=8)
    assert model.training  # the training loop's mode is left as it was
    assert all(p["boxes"].shape[1:] == (4,) and p["boxes"].dtype == np.float32 for p in predictions.values())
    assert all(len(p["boxes"]) == len(p["scores"]) == len(p["labels"]) for p in predictions.values())
    assert set(metrics["stats"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}
    model.eval()
    _, again = evaluate_model(model, val_dataset, Accelerator(cpu=True), batch_size=8)
    assert not model.training
    for image_id, prediction in predictions.items():
        np.testing.assert_array_equal(prediction["boxes"], again[image_id]["boxes"])


def test_merge_counts_every_image_exactly_once():
    shard = lambda i: (i, {"boxes": np.zeros((0, 4))})  # noqa: E731
    merged = merge_predictions([shard(2), shard(0), shard(1)], num_images=3)
    assert list(merged) == [0, 1, 2]
    with pytest.raises(RuntimeError, match="image 1 was predicted by more than one process"):
        merge_predictions([shard(0), shard(1), shard(1)], num_images=2)
    with pytest.raises(RuntimeError, match=r"1 image\(s\) have no prediction, e.g. \[2\]"):
        merge_predictions([shard(0), shard(1)], num_images=3)


def test_image_ids_must_be_dataset_indices(all_images):
    class Shifted(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            image, target = all_images[index]
            return image, {**target, "image_id": index + 10}

    paths = [r.image_path for r in all_images.records]
    with pytest.raises(ValueError, match="reports image_id 10"):
        predict_shard(Oracle(all_images), Shifted(), [0, 1], paths, batch_size=2)
