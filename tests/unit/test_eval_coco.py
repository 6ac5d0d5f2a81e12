"""COCO ground truth from JSONL records and results from model predictions."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.data.classes import ClassMap
from trainer.data.records import BoxAnnotation, Record
from trainer.evaluation.coco import build_coco_ground_truth, to_coco_results

CLASS_MAP = ClassMap(["cat", "dog"])


def record(path: Path, *boxes: BoxAnnotation, line: int = 1) -> Record:
    return Record(image_path=path, boxes=tuple(boxes), source=path.parent / "ann.jsonl", line=line)


def test_ground_truth_uses_header_sizes_and_class_map_ids(tmp_path):
    Image.new("RGB", (200, 100)).save(tmp_path / "a.png")
    Image.new("RGB", (64, 48)).save(tmp_path / "b.jpg")
    records = [
        record(tmp_path / "a.png", BoxAnnotation("dog", 0.1, 0.2, 0.6, 0.7), BoxAnnotation("cat", 0.0, 0.0, 1.0, 1.0)),
        record(tmp_path / "b.jpg", line=2),
        record(tmp_path / "a.png", BoxAnnotation("horse", 0.1, 0.1, 0.2, 0.2), BoxAnnotation("cat", 0.5, 0.5, 0.75, 1.0), line=3),
    ]
    gt = build_coco_ground_truth(records, CLASS_MAP)
    assert [(im["id"], im["width"], im["height"]) for im in gt["images"]] == [(0, 200, 100), (1, 64, 48), (2, 200, 100)]
    assert gt["categories"] == [{"id": 1, "name": "cat", "supercategory": "object"},
                                {"id": 2, "name": "dog", "supercategory": "object"}]
    anns = gt["annotations"]
    assert [a["id"] for a in anns] == [1, 2, 3]  # 1-based: 0 means "unmatched" to the evaluators
    assert [(a["image_id"], a["category_id"]) for a in anns] == [(0, 2), (0, 1), (2, 1)]
    np.testing.assert_allclose(anns[0]["bbox"], [20, 20, 100, 50])
    assert anns[0]["area"] == pytest.approx(5000) and anns[0]["iscrowd"] == 0
    np.testing.assert_allclose(anns[2]["bbox"], [100, 50, 50, 50])
    assert gt["info"]["dropped_labels"] == {"horse": 1}


def test_ground_truth_with_given_sizes_needs_one_per_record(tmp_path):
    records = [record(tmp_path / "missing.png", BoxAnnotation("cat", 0, 0, 0.5, 0.5))]
    gt = build_coco_ground_truth(records, CLASS_MAP, image_sizes=[(10, 20)])
    assert gt["annotations"][0]["bbox"] == [0.0, 0.0, 5.0, 10.0]
    with pytest.raises(ValueError, match="2 image sizes for 1 records"):
        build_coco_ground_truth(records, CLASS_MAP, image_sizes=[(10, 20), (1, 1)])


def test_results_are_xywh_sorted_by_image_then_score():
    predictions = {
        3: {"boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 5.0, 5.0]]),
            "scores": torch.tensor([0.2, 0.7]), "labels": torch.tensor([1, 2])},
        1: {"boxes": np.array([[1.5, 2.5, 3.5, 4.5]], dtype=np.float32), "scores": np.array([0.5]), "labels": np.array([2])},
        2: {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, dtype=np.int64)},
    }
    results = to_coco_results(predictions)
    assert results == [
        {"image_id": 1, "category_id": 2, "bbox": [1.5, 2.5, 2.0, 2.0], "score": 0.5},
        {"image_id": 3, "category_id": 2, "bbox": [0.0, 0.0, 5.0, 5.0], "score": pytest.approx(0.7)},
        {"image_id": 3, "category_id": 1, "bbox": [10.0, 20.0, 20.0, 40.0], "score": pytest.approx(0.2)},
    ]
    assert all(type(v) in (int, float) for r in results for v in [r["image_id"], r["category_id"], r["score"], *r["bbox"]])
