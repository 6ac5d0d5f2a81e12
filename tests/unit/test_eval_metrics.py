"""COCO metrics: exactness against pycocotools, edge cases, thresholded precision/recall/F1."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest

from trainer.data.classes import ClassMap
from trainer.evaluation.metrics import (
    STAT_NAMES, compute_metrics, greedy_match, run_coco_eval, scalar_metrics,
)

CLASS_MAP = ClassMap(["circle", "square", "triangle"])


def make_gt(boxes_per_image: list[list[tuple[int, list[float]]]], size=(200, 150)) -> dict:
    """COCO GT from [(category_id, [x, y, w, h]), ...] per image."""
    images, annotations = [], []
    for image_id, boxes in enumerate(boxes_per_image):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": size[0], "height": size[1]})
        for category_id, bbox in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                                "bbox": list(bbox), "area": bbox[2] * bbox[3], "iscrowd": 0})
    categories = [{"id": CLASS_MAP.id_of(n), "name": n} for n in CLASS_MAP.names]
    return {"images": images, "annotations": annotations, "categories": categories}


def perfect_results(gt: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 0.9}
            for a in gt["annotations"]]


def noisy_set(num_images: int, seed: int) -> tuple[dict, list[dict]]:
    """Random GT of all sizes (small/medium/large) and jittered, relabelled, spurious and missed predictions."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(num_images):
        width, height = int(rng.integers(48, 480)), int(rng.integers(48, 480))
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": width, "height": height})
        for _ in range(int(rng.integers(0, 7))):
            w, h = rng.uniform(3, width / 1.5), rng.uniform(3, height / 1.5)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            category = int(rng.integers(1, 4))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            if rng.random() < 0.85:
                jitter = rng.normal(0.0, 0.12, 4)
                label = category if rng.random() < 0.9 else int(rng.integers(1, 4))
                results.append({"image_id": image_id, "category_id": label, "score": float(rng.random()),
                                "bbox": [x + jitter[0] * w, y + jitter[1] * h, w * (1 + jitter[2]), h * (1 + jitter[3])]})
        for _ in range(int(rng.integers(0, 4))):
            results.append({"image_id": image_id, "category_id": int(rng.integers(1, 4)), "score": float(rng.random()),
                            "bbox": [rng.uniform(0, width / 2), rng.uniform(0, height / 2),
                                     rng.uniform(2, width / 2), rng.uniform(2, height / 2)]})
    categories = [{"id": CLASS_MAP.id_of(n), "name": n} for n in CLASS_MAP.names]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def pycocotools_eval(gt: dict, results: list[dict]):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def test_faster_coco_eval_equals_pycocotools_on_noisy_set():
    gt, results = noisy_set(num_images=300, seed=7)
    assert len(gt["annotations"]) > 500 and len(results) > 500
    reference = pycocotools_eval(gt, results)
    fast = run_coco_eval(gt, results)
    np.testing.assert_allclose(np.asarray(fast.stats[:12]), reference.stats, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(fast.eval["precision"]), reference.eval["precision"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(fast.eval["recall"]), reference.eval["recall"], rtol=0, atol=1e-12)
    # Every area range is populated, so no stat is the -1 "undefined" marker.
    assert (reference.stats > 0).all()
    metrics = compute_metrics(gt, results, CLASS_MAP)
    assert [metrics["stats"][name] for name in STAT_NAMES] == pytest.approx(list(reference.stats), abs=1e-12)
    for k, name in enumerate(CLASS_MAP.names):
        per_class = reference.eval["precision"][:, :, k, 0, -1]
        assert metrics["per_class"][name]["AP"] == pytest.approx(per_class[per_class > -1].mean(), abs=1e-12)


def test_inputs_are_not_modified():
    gt, results = noisy_set(num_images=5, seed=1)
    gt_before, results_before = copy.deepcopy(gt), copy.deepcopy(results)
    compute_metrics(gt, results, CLASS_MAP)
    assert gt == gt_before and results == results_before


def test_ground_truth_as_predictions_gives_ap_one():
    gt = make_gt([[(1, [10, 10, 50, 40]), (2, [100, 50, 60, 60])], [(3, [5, 5, 120, 100])], []])
    metrics = compute_metrics(gt, perfect_results(gt), CLASS_MAP)
    for name in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100"):
        assert metrics["stats"][name] == pytest.approx(1.0)
    for name in CLASS_MAP.names:
        entry = metrics["per_class"][name]
        assert (entry["AP"], entry["AP50"], entry["precision"], entry["recall"], entry["f1"]) == (1.0, 1.0, 1.0, 1.0, 1.0)
    counts = np.array(metrics["confusion_matrix"]["counts"])
    assert (counts == np.diag([1, 1, 1, 0])).all()


def test_empty_predictions_give_zero_without_crash():
    gt = make_gt([[(1, [10, 10, 50, 40])], [(2, [100, 50, 60, 60])]])
    metrics = compute_metrics(gt, [], CLASS_MAP)
    assert metrics["stats"]["AP"] == 0.0 and metrics["stats"]["AR100"] == 0.0
    assert metrics["per_class"]["circle"]["precision"] == 0.0 and metrics["per_class"]["circle"]["recall"] == 0.0
    assert metrics["num_predictions"] == 0
    json.dumps(metrics, allow_nan=False)
    curves = metrics["precision_recall_curves"]
    assert set(curves["precision"]) == {"circle", "square"} and len(curves["recall"]) == 101
    assert scalar_metrics(metrics)["AP"] == 0.0


def test_class_without_ground_truth_is_reported_as_null_not_nan():
    gt = make_gt([[(1, [10, 10, 50, 40])], [(1, [100, 50, 60, 60])]])  # no square, no triangle
    results = perfect_results(gt) + [{"image_id": 0, "category_id": 2, "bbox": [0, 0, 30, 30], "score": 0.8}]
    metrics = compute_metrics(gt, results, CLASS_MAP)
    assert metrics["classes_without_ground_truth"] == ["square", "triangle"]
    assert metrics["predicted_classes_without_ground_truth"] == ["square"]
    square = metrics["per_class"]["square"]
    assert square["has_ground_truth"] is False
    assert square["AP"] is None and square["precision"] is None and square["f1"] is None
    assert square["num_predictions"] == 1
    # Like COCO: the class without ground truth stays out of the mean, so the square false positive changes nothing.
    assert metrics["stats"]["AP"] == pytest.approx(1.0)
    text = json.dumps(metrics, allow_nan=False)
    assert "NaN" not in text and '"AP": null' in text
    # All boxes are 40x50 / 60x60 px: medium only, so small/large stats are undefined (null), never -1.
    assert metrics["stats"]["APs"] is None and "APs" in metrics["undefined_stats"]
    assert all(math.isfinite(v) for v in scalar_metrics(metrics).values())


def test_unknown_predicted_label_is_reported_and_metrics_unchanged():
    gt, results = noisy_set(num_images=20, seed=3)
    base = compute_metrics(gt, results, CLASS_MAP)
    extra = results + [{"image_id": 0, "category_id": 9, "bbox": [1, 1, 20, 20], "score": 0.99}] * 2
    metrics = compute_metrics(gt, extra, CLASS_MAP)
    assert metrics["unknown_predicted_category_ids"] == {"9": 2}
    assert metrics["stats"] == base["stats"] and metrics["per_class"] == base["per_class"]


def test_precision_recall_f1_at_thresholds():
    # circle: two GT; one exact hit, one duplicate of the hit (FP), one low-score hit on the second GT.
    gt = make_gt([[(1, [0, 0, 40, 40]), (1, [100, 100, 40, 40])]])
    results = [
        {"image_id": 0, "category_id": 1, "bbox": [0, 0, 40, 40], "score": 0.9},
        {"image_id": 0, "category_id": 1, "bbox": [2, 2, 40, 40], "score": 0.8},
        {"image_id": 0, "category_id": 1, "bbox": [100, 100, 40, 40], "score": 0.3},
    ]
    high = compute_metrics(gt, results, CLASS_MAP, score_threshold=0.5)["per_class"]["circle"]
    assert (high["true_positives"], high["num_predictions_above_threshold"]) == (1, 2)
    assert high["precision"] == pytest.approx(0.5) and high["recall"] == pytest.approx(0.5)
    assert high["f1"] == pytest.approx(0.5)
    low = compute_metrics(gt, results, CLASS_MAP, score_threshold=0.2)["per_class"]["circle"]
    assert low["precision"] == pytest.approx(2 / 3) and low["recall"] == pytest.approx(1.0)
    assert low["f1"] == pytest.approx(0.8)
    # IoU of the shifted duplicate with the first GT is 38*38/(2*1600-38*38) ~ 0.82: a strict IoU makes it miss too.
    strict = compute_metrics(gt, results[:1], CLASS_MAP, iou_threshold=0.99)["per_class"]["circle"]
    assert strict["true_positives"] == 1
    shifted = compute_metrics(gt, results[1:2], CLASS_MAP, iou_threshold=0.9)["per_class"]["circle"]
    assert shifted["true_positives"] == 0 and shifted["recall"] == 0.0


def test_confusion_matrix_counts_wrong_class_missed_and_spurious():
    gt = make_gt([[(1, [0, 0, 40, 40]), (2, [100, 100, 40, 40]), (3, [50, 0, 30, 30])]])
    results = [
        {"image_id": 0, "category_id": 1, "bbox": [0, 0, 40, 40], "score": 0.9},  # correct
        {"image_id": 0, "category_id": 3, "bbox": [100, 100, 40, 40], "score": 0.9},  # square called triangle
        {"image_id": 0, "category_id": 2, "bbox": [150, 10, 20, 20], "score": 0.9},  # nothing there
    ]  # the triangle GT is missed
    confusion = compute_metrics(gt, results, CLASS_MAP)["confusion_matrix"]
    assert confusion["labels"] == ["circle", "square", "triangle", "background"]
    expected = np.zeros((4, 4), dtype=int)
    expected[0, 0] = 1  # circle -> circle
    expected[1, 2] = 1  # square -> triangle
    expected[3, 1] = 1  # background -> square
    expected[2, 3] = 1  # triangle -> missed
    assert (np.array(confusion["counts"]) == expected).all()


def test_greedy_match_prefers_highest_iou_and_uses_each_gt_once():
    gt = np.array([[0, 0, 10, 10], [0, 0, 11, 11]], dtype=float)
    pred = np.array([[0, 0, 11, 11], [0, 0, 11, 11], [0, 0, 11, 11]], dtype=float)
    assert greedy_match(pred, gt, 0.5).tolist() == [1, 0, -1]
    assert greedy_match(pred[:0], gt, 0.5).tolist() == []


def test_ground_truth_must_match_class_map():
    gt = make_gt([[(1, [0, 0, 10, 10])]])
    with pytest.raises(ValueError, match="do not match the class map"):
        compute_metrics(gt, [], ClassMap(["dog", "cat", "bird"]))
    with pytest.raises(ValueError, match="no images"):
        compute_metrics(dict(gt, images=[]), [], CLASS_MAP)
