"""COCO-format ground truth and results, built from JSONL records and model predictions.

Image ids are indices into the record list, category ids are the class map's ids (1..K), and
annotation ids start at 1: the COCO evaluators use 0 as their "unmatched" marker.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from trainer.data.classes import ClassMap
from trainer.data.records import Record


def coco_categories(class_map: ClassMap) -> list[dict]:
    return [{"id": class_map.id_of(name), "name": name, "supercategory": "object"} for name in class_map.names]


def build_coco_ground_truth(
    records: Sequence[Record],
    class_map: ClassMap,
    image_sizes: Sequence[tuple[int, int]] | None = None,
) -> dict:
    """COCO detection ground truth for ``records``; boxes in pixels of the original image, absolute file names.

    ``image_sizes`` gives (width, height) per record; by default they are read from the image
    headers (no decoding). Boxes whose label is not in ``class_map`` are left out, as the dataset
    drops them, and counted in ``gt["info"]["dropped_labels"]``.
    """
    if image_sizes is None:
        from trainer.data.images import image_size

        image_sizes = [image_size(record.image_path) for record in records]
    if len(image_sizes) != len(records):
        raise ValueError(f"got {len(image_sizes)} image sizes for {len(records)} records")
    images, annotations, dropped = [], [], Counter()
    for image_id, (record, (width, height)) in enumerate(zip(records, image_sizes)):
        images.append({"id": image_id, "file_name": str(Path(record.image_path).resolve()),
                       "width": int(width), "height": int(height)})
        for box in record.boxes:
            if box.label not in class_map:
                dropped[box.label] += 1
                continue
            x, y = box.x_min * width, box.y_min * height
            w, h = (box.x_max - box.x_min) * width, (box.y_max - box.y_min) * height
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": class_map.id_of(box.label),
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
            })
    return {
        "info": {"description": "ground truth built from JSONL records", "dropped_labels": dict(dropped)},
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(class_map),
    }


def _as_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, on any device and of any dtype (numpy has no bfloat16)
        value = value.detach().cpu()
        value = (value.double() if value.is_floating_point() else value).numpy()
    return np.asarray(value)


def to_coco_results(predictions: Mapping[int, Mapping]) -> list[dict]:
    """``{image_id: {"boxes": [M,4] xyxy px, "scores": [M], "labels": [M]}}`` -> COCO results, xywh boxes.

    Sorted by image id, then by descending score, so the file is the same whatever the process count.
    """
    results = []
    for image_id in sorted(predictions):
        prediction = predictions[image_id]
        boxes = _as_numpy(prediction["boxes"]).reshape(-1, 4).astype(np.float64)
        scores = _as_numpy(prediction["scores"]).reshape(-1).astype(np.float64)
        labels = _as_numpy(prediction["labels"]).reshape(-1).astype(np.int64)
        for i in np.argsort(-scores, kind="stable"):
            x1, y1, x2, y2 = boxes[i].tolist()
            results.append({
                "image_id": int(image_id),
                "category_id": int(labels[i]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(scores[i]),
            })
    return results


def ground_truth_arrays(gt: dict) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """image id -> (xyxy boxes [N,4], category ids [N]) from a COCO ground truth dict (crowd boxes skipped)."""
    per_image: dict[int, list] = {image["id"]: [] for image in gt["images"]}
    for ann in gt["annotations"]:
        if not ann.get("iscrowd", 0):
            per_image[ann["image_id"]].append(ann)
    return {image_id: _xywh_to_arrays(anns, with_scores=False) for image_id, anns in per_image.items()}


def results_arrays(results: Sequence[Mapping], image_ids) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """image id -> (xyxy boxes, category ids, scores) from a COCO results list."""
    per_image: dict[int, list] = {image_id: [] for image_id in image_ids}
    for ann in results:
        per_image.setdefault(ann["image_id"], []).append(ann)
    return {image_id: _xywh_to_arrays(anns, with_scores=True) for image_id, anns in per_image.items()}


def _xywh_to_arrays(anns: Sequence[Mapping], with_scores: bool):
    boxes = np.array([ann["bbox"] for ann in anns], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    labels = np.array([ann["category_id"] for ann in anns], dtype=np.int64)
    if not with_scores:
        return boxes, labels
    return boxes, labels, np.array([ann["score"] for ann in anns], dtype=np.float64)
