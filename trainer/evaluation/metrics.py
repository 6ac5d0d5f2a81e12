"""COCO detection metrics with faster-coco-eval's C++ evaluator, plus thresholded per-class counts.

AP/AR follow COCO exactly (the stats equal pycocotools'; see tests/unit/test_eval_metrics.py).
Precision, recall and F1 are reported at one operating point (``score_threshold``,
``iou_threshold``) with COCO's greedy matching: detections in descending score order each take
the unmatched ground truth box of the same class with the highest IoU >= ``iou_threshold``.

Undefined numbers (a COCO stat of -1, e.g. APs when there is no small object; a class with no
ground truth in this split) are ``None`` in the returned dict, so the JSON holds ``null`` and
never NaN, and the reason is listed next to them.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from trainer.data.classes import ClassMap
from trainer.evaluation.coco import ground_truth_arrays, results_arrays

logger = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
STAT_DESCRIPTIONS = {
    "AP": "AP at IoU=0.50:0.95, all areas, maxDets=100",
    "AP50": "AP at IoU=0.50",
    "AP75": "AP at IoU=0.75",
    "APs": "AP for small objects (area < 32^2 px)",
    "APm": "AP for medium objects (32^2 <= area < 96^2 px)",
    "APl": "AP for large objects (area >= 96^2 px)",
    "AR1": "AR given 1 detection per image",
    "AR10": "AR given 10 detections per image",
    "AR100": "AR given 100 detections per image",
    "ARs": "AR for small objects",
    "ARm": "AR for medium objects",
    "ARl": "AR for large objects",
}


def run_coco_eval(gt: dict, results: Sequence[dict]) -> COCOeval_faster:
    """Evaluate, accumulate and summarize bbox results with the C++ evaluator. Inputs are not modified."""
    # The evaluator writes an "ignore" flag into each ground-truth annotation: copy those dicts, not the
    # whole structure (a deepcopy of the ground truth cost more than the C++ evaluation itself).
    coco_gt = COCO({**gt, "annotations": [dict(a) for a in gt["annotations"]]}, print_function=logger.debug)
    evaluator = COCOeval_faster(coco_gt, _detections_as_coco(coco_gt, results), iouType="bbox",
                                print_function=logger.debug)
    evaluator.run()
    return evaluator


def _detections_as_coco(coco_gt: COCO, results: Sequence[dict]) -> COCO:
    """What ``loadRes`` builds for bbox results, in one pass over fresh dicts.

    ``loadRes`` would mutate its input (so it needs a copy) and add a polygon per detection that bbox
    evaluation never reads; on 36k detections the two cost more than the C++ evaluation.
    """
    unknown = {r["image_id"] for r in results} - set(coco_gt.imgs)
    if unknown:
        raise ValueError(f"results name {len(unknown)} image id(s) that are not in the ground truth, e.g. {min(unknown)}")
    annotations = [
        {"id": index, "image_id": r["image_id"], "category_id": r["category_id"], "bbox": r["bbox"],
         "score": r["score"], "area": r["bbox"][2] * r["bbox"][3], "iscrowd": 0}
        for index, r in enumerate(results, start=1)
    ]
    coco_dt = COCO(print_function=logger.debug)
    coco_dt.dataset = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"],
                       "annotations": annotations}
    coco_dt.createIndex()
    return coco_dt


def _mean_defined(values: np.ndarray) -> float | None:
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else None


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of xyxy boxes (no +1 pixel convention, as in COCO)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def greedy_match(pred_boxes: np.ndarray, gt_boxes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """For predictions sorted by descending score: index of the matched ground truth box, or -1."""
    matches = np.full(len(pred_boxes), -1, dtype=np.int64)
    if len(pred_boxes) == 0 or len(gt_boxes) == 0:
        return matches
    ious = box_iou(pred_boxes, gt_boxes)
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for i in range(len(pred_boxes)):
        candidates = np.where(taken, -1.0, ious[i])
        best = int(candidates.argmax())
        if candidates[best] >= iou_threshold:
            matches[i] = best
            taken[best] = True
    return matches


def _operating_point_counts(gt_arrays, dt_arrays, category_ids, score_threshold, iou_threshold):
    """Per-class TP / prediction / GT counts at the operating point, and the class-agnostic confusion matrix."""
    index = {cid: i for i, cid in enumerate(category_ids)}
    background = len(category_ids)
    tp, n_pred, n_gt = Counter(), Counter(), Counter()
    confusion = np.zeros((background + 1, background + 1), dtype=np.int64)
    for image_id, (gt_boxes, gt_labels) in gt_arrays.items():
        boxes, labels, scores = dt_arrays.get(image_id, (np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0)))
        keep = (scores >= score_threshold) & np.isin(labels, category_ids)
        order = np.argsort(-scores[keep], kind="stable")
        boxes, labels = boxes[keep][order], labels[keep][order]
        n_gt.update(gt_labels.tolist())
        n_pred.update(labels.tolist())
        for cid in np.unique(labels):
            gt_of_class = gt_labels == cid
            matched = greedy_match(boxes[labels == cid], gt_boxes[gt_of_class], iou_threshold)
            tp[int(cid)] += int((matched >= 0).sum())
        # Class-agnostic matching: a box found with the wrong class lands off the diagonal.
        matched = greedy_match(boxes, gt_boxes, iou_threshold)
        for pred_label, gt_index in zip(labels.tolist(), matched.tolist()):
            row = index[int(gt_labels[gt_index])] if gt_index >= 0 else background
            confusion[row, index[pred_label]] += 1
        unmatched_gt = np.setdiff1d(np.arange(len(gt_labels)), matched[matched >= 0])
        for gt_label in gt_labels[unmatched_gt].tolist():
            confusion[index[int(gt_label)], background] += 1
    return tp, n_pred, n_gt, confusion


def precision_recall_f1(tp: int, n_pred: int, n_gt: int) -> tuple[float | None, float | None, float | None]:
    """All None for a class without ground truth (undefined); zero precision when nothing was predicted."""
    if n_gt == 0:
        return None, None, None
    p, r = (tp / n_pred if n_pred else 0.0), tp / n_gt
    return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


def compute_metrics(
    gt: dict,
    results: Sequence[dict],
    class_map: ClassMap | None,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
) -> dict:
    """JSON-ready metrics of COCO ``results`` against the COCO ground truth ``gt``.

    Keys: ``stats`` (the 12 COCO stats by name; ``stats["AP"]`` is mAP), ``per_class`` (AP, AP50 and
    precision/recall/F1 at the operating point), ``macro`` means of those, ``confusion_matrix`` and
    ``precision_recall_curves`` (COCO's interpolated curves at IoU=0.50), plus what was left out and why.
    ``class_map`` must agree with the ground truth's categories (None: take them from ``gt``).
    """
    if not gt.get("images"):
        raise ValueError("the ground truth has no images to evaluate")
    names = {cat["id"]: cat["name"] for cat in gt["categories"]}
    if class_map is not None:
        expected = {class_map.id_of(name): name for name in class_map.names}
        if names != expected:
            raise ValueError(f"ground truth categories {names} do not match the class map {expected}")
    category_ids = sorted(names)
    known_ids = set(category_ids)
    predicted = Counter(int(r["category_id"]) for r in results)
    unknown_labels = {cid: n for cid, n in predicted.items() if cid not in known_ids}

    evaluator = run_coco_eval(gt, results)
    stats_array = np.asarray(evaluator.stats, dtype=np.float64)[: len(STAT_NAMES)]
    stats = {name: (float(v) if v > -1 else None) for name, v in zip(STAT_NAMES, stats_array)}
    params = evaluator.params
    iou50 = int(np.argmin(np.abs(params.iouThrs - 0.5)))
    precision = np.asarray(evaluator.eval["precision"])  # [T, R, K, A, M]; -1 where undefined

    gt_arrays = ground_truth_arrays(gt)
    dt_arrays = results_arrays(results, gt_arrays.keys())
    tp, n_pred, n_gt, confusion = _operating_point_counts(
        gt_arrays, dt_arrays, category_ids, score_threshold, iou_threshold)

    per_class, curves = {}, {}
    for k, cid in enumerate(params.catIds):
        name = names[cid]
        has_gt = n_gt[cid] > 0
        p, r, f1 = precision_recall_f1(tp[cid], n_pred[cid], n_gt[cid])
        per_class[name] = {
            "id": int(cid),
            "has_ground_truth": has_gt,
            "AP": _mean_defined(precision[:, :, k, 0, -1]),
            "AP50": _mean_defined(precision[iou50, :, k, 0, -1]),
            "precision": p,
            "recall": r,
            "f1": f1,
            "num_ground_truth": int(n_gt[cid]),
            "num_predictions": int(predicted[cid]),
            "num_predictions_above_threshold": int(n_pred[cid]),
            "true_positives": int(tp[cid]),
        }
        if has_gt:
            curves[name] = precision[iou50, :, k, 0, -1].clip(min=0.0).tolist()

    with_gt = [c for c in per_class.values() if c["has_ground_truth"]]
    metrics = {
        "stats": stats,
        "stat_definitions": dict(STAT_DESCRIPTIONS),
        "undefined_stats": [name for name, value in stats.items() if value is None],
        "per_class": per_class,
        "classes_without_ground_truth": [name for name, c in per_class.items() if not c["has_ground_truth"]],
        "predicted_classes_without_ground_truth": [
            name for name, c in per_class.items() if not c["has_ground_truth"] and c["num_predictions"] > 0],
        # Predictions whose category id is not in the ground truth: ignored by COCO, reported here.
        "unknown_predicted_category_ids": {str(k): v for k, v in sorted(unknown_labels.items())},
        # Means over the classes that have ground truth in this split, like COCO's AP.
        "macro": {
            key: (float(np.mean([c[key] for c in with_gt])) if with_gt else None)
            for key in ("precision", "recall", "f1")
        },
        "score_threshold": float(score_threshold),
        "iou_threshold": float(iou_threshold),
        "num_images": len(gt["images"]),
        "num_ground_truth": len(gt["annotations"]),
        "num_predictions": len(results),
        "confusion_matrix": {"labels": [names[c] for c in category_ids] + ["background"],
                             "rows_are": "ground truth", "columns_are": "prediction",
                             "counts": confusion.tolist()},
        # Interpolated precision at COCO's 101 recall points, IoU=0.50, classes with ground truth.
        "precision_recall_curves": {"iou_threshold": 0.5, "recall": params.recThrs.tolist(), "precision": curves},
    }
    return metrics


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """Flat ``{name: float}`` view for loggers and checkpoints: the defined COCO stats and macro P/R/F1."""
    flat = {name: value for name, value in metrics["stats"].items() if value is not None}
    flat.update({key: value for key, value in metrics["macro"].items() if value is not None})
    return flat
