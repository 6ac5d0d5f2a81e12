"""Suite 3, evaluation: the engine's COCO evaluation (merge shards by image id, build the ground truth from the
JSONL records, score with faster-coco-eval) vs plain pycocotools on the same predictions; same 12 stats."""
from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from benchmarks.common import BCCD_DIR, interleaved, median, paired_ratio, sample_data
from trainer.data.builder import build_datasets
from trainer.data.images import _header_size
from trainer.evaluation.coco import build_coco_ground_truth, to_coco_results
from trainer.evaluation.distributed import merge_predictions
from trainer.evaluation.metrics import STAT_NAMES, compute_metrics


@dataclass
class EvalSettings:
    max_images: int = 364
    detections_per_image: int = 100
    repeats: int = 5
    seed: int = 0


def synthetic_predictions(records, class_map, sizes, detections: int, seed: int) -> dict[int, dict]:
    """Jittered ground truth boxes (true positives of varying quality) plus random boxes, random scores."""
    rng = np.random.default_rng(seed)
    predictions = {}
    for image_id, (record, (width, height)) in enumerate(zip(records, sizes)):
        scale = np.array([width, height, width, height], dtype=np.float64)
        gt = np.array([[b.x_min, b.y_min, b.x_max, b.y_max] for b in record.boxes]).reshape(-1, 4) * scale
        jitter = rng.normal(0, 0.08, gt.shape) * np.repeat(gt[:, 2:] - gt[:, :2], 2, axis=0).reshape(gt.shape)
        extra = max(detections - len(gt), 0)
        corners = rng.uniform(0, 1, (extra, 2)) * scale[:2]
        random_boxes = np.concatenate([corners, corners + rng.uniform(8, 120, (extra, 2))], axis=1)
        boxes = np.concatenate([gt + jitter, random_boxes])[:detections]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        true_labels = np.array([class_map.id_of(b.label) for b in record.boxes], dtype=np.int64)
        # 10% of the matched boxes get a wrong class, as a real detector's confusions would.
        confused = rng.uniform(0, 1, len(true_labels)) < 0.1
        true_labels[confused] = rng.integers(1, class_map.num_classes + 1, int(confused.sum()))
        labels = np.concatenate([true_labels, rng.integers(1, class_map.num_classes + 1, extra)])[:detections]
        scores = np.concatenate([rng.uniform(0.3, 1.0, len(gt)), rng.uniform(0.0, 0.7, extra)])[:detections]
        predictions[image_id] = {"boxes": boxes, "scores": scores, "labels": labels}
    return predictions


def plain_pycocotools(records, class_map, predictions: dict[int, dict]) -> np.ndarray:
    """What a script without this package does: sizes with PIL, a COCO dict, pycocotools' evaluator."""
    images, annotations = [], []
    for image_id, record in enumerate(records):
        with Image.open(record.image_path) as image:
            width, height = image.size
        images.append({"id": image_id, "width": width, "height": height, "file_name": str(record.image_path)})
        for box in record.boxes:
            x, y, w, h = box.x_min * width, box.y_min * height, (box.x_max - box.x_min) * width, \
                (box.y_max - box.y_min) * height
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "bbox": [x, y, w, h],
                                "category_id": class_map.id_of(box.label), "area": w * h, "iscrowd": 0})
    results = []
    for image_id, prediction in predictions.items():
        for (x1, y1, x2, y2), score, label in zip(prediction["boxes"].tolist(), prediction["scores"].tolist(),
                                                  prediction["labels"].tolist()):
            results.append({"image_id": image_id, "category_id": int(label), "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": annotations,
                           "categories": [{"id": class_map.id_of(n), "name": n} for n in class_map.names]}
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats[: len(STAT_NAMES)], dtype=np.float64)


def ours(records, class_map, predictions: dict[int, dict]) -> np.ndarray:
    """The engine's path after the processes' predictions are gathered (``evaluate_model``'s main process)."""
    _header_size.cache_clear()  # count the header reads each time, as a fresh evaluation would
    merged = merge_predictions(list(predictions.items()), len(records))
    metrics = compute_metrics(build_coco_ground_truth(records, class_map), to_coco_results(merged), class_map)
    return np.array([-1.0 if metrics["stats"][n] is None else metrics["stats"][n] for n in STAT_NAMES])


def run(work_dir: Path, settings: EvalSettings) -> dict:
    root = BCCD_DIR if (BCCD_DIR / "dataset.jsonl").is_file() else sample_data(work_dir / "eval_data", 300, (320, 240))
    bundle = build_datasets({"train_jsonl": str(root / "dataset.jsonl"), "val_split": 0, "augmentation": "none"})
    records, class_map = bundle.train.records[: settings.max_images], bundle.class_map
    sizes = [Image.open(record.image_path).size for record in records]
    predictions = synthetic_predictions(records, class_map, sizes, settings.detections_per_image, settings.seed)
    stats = {}

    def run_ours():
        stats["ours"] = ours(records, class_map, copy.deepcopy(predictions))

    def run_plain():
        stats["pycocotools"] = plain_pycocotools(records, class_map, predictions)

    times = interleaved({"ours": run_ours, "pycocotools": run_plain}, repeats=settings.repeats)
    difference = float(np.abs(stats["ours"] - stats["pycocotools"]).max())
    return {"images": len(records), "ground_truth_boxes": sum(len(r.boxes) for r in records),
            "detections": sum(len(p["scores"]) for p in predictions.values()),
            "source": "bccd (all images)" if root == BCCD_DIR else "synthetic sample",
            "ours_s": median(times["ours"]), "pycocotools_s": median(times["pycocotools"]),
            "ratio": paired_ratio(times["ours"], times["pycocotools"]),
            "max_stat_difference": difference, "identical_stats": difference < 1e-9,
            "stats": dict(zip(STAT_NAMES, stats["ours"].tolist()))}


def to_markdown(result: dict) -> str:
    return "\n".join([
        f"{result['images']} images ({result['source']}), {result['ground_truth_boxes']} ground truth boxes, "
        f"{result['detections']} detections.", "",
        "| ours (merge + GT + score) | plain pycocotools | ours / pycocotools | target <= 0.25 | max stat difference |",
        "|---|---|---|---|---|",
        f"| {result['ours_s']:.3f} s | {result['pycocotools_s']:.3f} s | {result['ratio']:.3f}x | "
        f"{'yes' if result['ratio'] <= 0.25 else 'no'} | {result['max_stat_difference']:.1e} "
        f"({'identical' if result['identical_stats'] else 'DIFFERENT'}) |"])
