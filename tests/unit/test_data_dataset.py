"""DetectionDataset output contract, collate_fn, and the augmentation policies."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

from trainer.data.classes import ClassMap
from trainer.data.dataset import DetectionDataset, collate_fn
from trainer.data.records import load_records
from trainer.data.transforms import POLICIES, build_transforms


@pytest.fixture(scope="module")
def sample(sample_dataset_dir):
    records, _ = load_records(sample_dataset_dir / "dataset.jsonl")
    return records, ClassMap(["circle", "square", "triangle"])


def test_output_contract(sample):
    records, class_map = sample
    dataset = DetectionDataset(records, class_map)
    assert len(dataset) == 24 and dataset.records == records and dataset.class_map is class_map
    for index in range(len(dataset)):
        image, target = dataset[index]
        assert image.dtype == torch.float32 and image.shape == (3, 96, 128)
        assert 0.0 <= image.min() and image.max() <= 1.0
        boxes = target["boxes"]
        assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.dtype == torch.float32
        assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY and boxes.canvas_size == (96, 128)
        assert target["labels"].dtype == torch.int64 and target["image_id"] == index
        record = records[index]
        assert target["labels"].tolist() == [class_map.id_of(b.label) for b in record.boxes]
        expected = torch.tensor([[b.x_min * 128, b.y_min * 96, b.x_max * 128, b.y_max * 96] for b in record.boxes])
        torch.testing.assert_close(boxes.as_subclass(torch.Tensor), expected.reshape(-1, 4))


def test_negatives_are_kept_with_empty_targets(sample):
    records, class_map = sample
    dataset = DetectionDataset(records, class_map, build_transforms("default"))
    negatives = [i for i, r in enumerate(records) if not r.boxes]
    assert negatives, "the sample data should contain images without objects"
    for _ in range(5):  # random crops/zooms must cope with no boxes
        image, target = dataset[negatives[0]]
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
        assert image.dtype == torch.float32


def test_labels_outside_the_class_map_are_dropped_and_counted(sample):
    records, _ = sample
    dataset = DetectionDataset(records, ClassMap(["triangle", "circle"]))
    all_labels = [b.label for r in records for b in r.boxes]
    assert dataset.dropped_labels == {"square": all_labels.count("square")}
    assert dataset.num_boxes() == len(all_labels) - all_labels.count("square")
    for index in range(len(dataset)):
        _, target = dataset[index]
        kept = [b.label for b in records[index].boxes if b.label != "square"]
        assert target["labels"].tolist() == [{"triangle": 1, "circle": 2}[name] for name in kept]


def test_image_sizes_come_from_headers(sample):
    records, class_map = sample
    assert DetectionDataset(records, class_map).image_sizes() == [(128, 96)] * 24


def test_collate_keeps_lists(sample):
    records, class_map = sample
    dataset = DetectionDataset(records, class_map)
    images, targets = collate_fn([dataset[0], dataset[1], dataset[2]])
    assert len(images) == len(targets) == 3 and [t["image_id"] for t in targets] == [0, 1, 2]


def _asymmetric_dataset(tmp_path):
    """One 40x20 image with one box on the left half."""
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[5:15, 2:12] = 255
    Image.fromarray(array).save(tmp_path / "a.png")
    line = {"image_path": "a.png", "bounding_box_annotations": [{"annotation_label": "obj",
            "x_min_normalized": 0.05, "y_min_normalized": 0.25, "x_max_normalized": 0.3, "y_max_normalized": 0.75}]}
    (tmp_path / "a.jsonl").write_text(json.dumps(line) + "\n")
    records, _ = load_records(tmp_path / "a.jsonl")
    return records


def test_horizontal_flip_moves_boxes_with_pixels(tmp_path):
    records = _asymmetric_dataset(tmp_path)
    dataset = DetectionDataset(records, ClassMap(["obj"]), T.Compose([T.RandomHorizontalFlip(p=1.0),
                                                                     T.ToDtype(torch.float32, scale=True)]))
    image, target = dataset[0]
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), torch.tensor([[28.0, 5.0, 38.0, 15.0]]))
    assert image[0, 10, 30] == 1.0 and image[0, 10, 5] == 0.0  # the white block is now on the right


@pytest.mark.parametrize("policy", POLICIES)
def test_policies_keep_boxes_inside_and_consistent(sample, policy):
    records, class_map = sample
    dataset = DetectionDataset(records, class_map, build_transforms(policy))
    torch.manual_seed(0)
    for index in range(len(dataset)):
        image, target = dataset[index]
        height, width = image.shape[-2:]
        boxes = target["boxes"]
        assert image.dtype == torch.float32 and image.max() <= 1.0
        assert boxes.canvas_size == (height, width) and len(boxes) == len(target["labels"])
        if len(boxes):
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
            assert boxes[:, 0].min() >= 0 and boxes[:, 1].min() >= 0
            assert boxes[:, 2].max() <= width and boxes[:, 3].max() <= height
        if policy in ("none", "flip"):
            assert (height, width) == (96, 128) and len(boxes) == len(records[index].boxes)


def test_default_policy_augments_and_preserves_object_shape(tmp_path):
    records = _asymmetric_dataset(tmp_path)  # a 10x10 square object
    dataset = DetectionDataset(records, ClassMap(["obj"]), build_transforms("default"))
    torch.manual_seed(0)
    sizes = set()
    for _ in range(30):
        image, target = dataset[0]
        sizes.add(tuple(image.shape[-2:]))
        for x0, y0, x1, y1 in target["boxes"].tolist():
            if x0 > 0 and y0 > 0 and x1 < image.shape[-1] and y1 < image.shape[-2]:  # not cut by a crop
                assert x1 - x0 == pytest.approx(y1 - y0, abs=1e-4)  # no stretching
    assert len(sizes) > 1  # zoom-out / crop changed the canvas at least once


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown augmentation policy 'fancy'.*none, flip, default"):
        build_transforms("fancy")


def test_default_policy_drops_vanished_boxes_with_their_labels():
    sanitize = build_transforms("default").transforms[-1]
    image = tv_tensors.Image(torch.zeros(3, 10, 10))
    target = {"boxes": tv_tensors.BoundingBoxes([[1, 1, 5, 5], [3, 3, 3, 8]], format="XYXY", canvas_size=(10, 10)),
              "labels": torch.tensor([2, 3]), "image_id": 0}
    _, out = sanitize(image, target)
    assert out["boxes"].tolist() == [[1, 1, 5, 5]] and out["labels"].tolist() == [2]


def test_works_in_dataloader_workers_with_the_grouped_sampler(sample):
    from torch.utils.data import DataLoader

    from trainer.data.samplers import GroupedBatchSampler

    records, class_map = sample
    dataset = DetectionDataset(records, class_map, build_transforms("default"))
    loader = DataLoader(dataset, batch_sampler=GroupedBatchSampler(dataset, batch_size=5, seed=0),
                        num_workers=1, collate_fn=collate_fn)
    seen = [t["image_id"] for images, targets in loader for t in targets]
    assert sorted(seen) == list(range(24))
