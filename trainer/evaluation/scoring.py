"""The score command: metrics for predictions made by any system, against JSONL or COCO ground truth.

Inputs:
- ground truth: the annotation JSONL format, or a COCO json (``images``, ``annotations``, ``categories``);
- predictions: the JSONL format plus a ``score`` per box (normalized coordinates, scaled by the ground
  truth's image sizes), or a COCO results json (list of ``image_id``, ``category_id``, ``bbox``, ``score``).

Predicted labels the ground truth does not have are reported and left out, as in COCO.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from trainer.data.classes import ClassMap
from trainer.data.records import COORD_FIELDS, DataIssue, DataValidationError, load_records
from trainer.evaluation.coco import build_coco_ground_truth
from trainer.evaluation.metrics import compute_metrics
from trainer.evaluation.report import format_metrics_table, write_json


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as error:
        raise DataValidationError([DataIssue(path, 0, "", "", f"cannot read JSON: {error}")]) from None


def load_ground_truth(path: str | Path, classes=None, data_dir=None, strict: bool = True) -> tuple[dict, ClassMap | None]:
    """COCO ground truth dict (+ the class map for JSONL input; None for COCO input, whose categories rule)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        gt = _read_json(path)
        missing = [key for key in ("images", "annotations", "categories") if not isinstance(gt, dict) or key not in gt]
        if missing:
            raise DataValidationError([DataIssue(path, 0, ", ".join(missing), "", "not a COCO ground truth: missing")])
        return gt, None
    records, _ = load_records(path, data_dir=data_dir, strict=strict)
    class_map = ClassMap.from_labels((box.label for r in records for box in r.boxes), classes)
    return build_coco_ground_truth(records, class_map), class_map


class _ImageIndex:
    """Finds a ground-truth image id for a predicted image path: same file, else the same unique file name."""

    def __init__(self, gt: dict, gt_path: Path):
        self.gt_dir = gt_path.parent
        self.by_path, by_name = {}, {}
        for image in gt["images"]:
            self.by_path[str(self._absolute(image["file_name"], self.gt_dir))] = image
            by_name.setdefault(Path(image["file_name"]).name, []).append(image)
        self.by_name = {name: images[0] for name, images in by_name.items() if len(images) == 1}

    @staticmethod
    def _absolute(path: str, base: Path) -> Path:
        path = Path(path)
        return (path if path.is_absolute() else base / path).resolve()

    def find(self, image_path: str, predictions_dir: Path) -> dict | None:
        for base in (predictions_dir, self.gt_dir):
            image = self.by_path.get(str(self._absolute(image_path, base)))
            if image is not None:
                return image
        return self.by_name.get(Path(image_path).name)


def _number(value, where: str, line_no: int, path: Path, issues: list) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        issues.append(DataIssue(path, line_no, where, repr(value)[:80], "must be a finite number"))
        return None
    return float(value)


def load_jsonl_predictions(path: str | Path, gt: dict, gt_path: str | Path) -> tuple[list[dict], Counter]:
    """COCO results from a predictions JSONL; returns (results, counts of labels the ground truth lacks)."""
    path, index = Path(path), _ImageIndex(gt, Path(gt_path))
    ids = {cat["name"]: cat["id"] for cat in gt["categories"]}
    unknown_ids: dict[str, int] = {}
    results, issues, unknown = [], [], Counter()
    with open(path, encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as error:
                issues.append(DataIssue(path, line_no, "", line.strip()[:80], f"malformed JSON: {error}"))
                continue
            if not isinstance(row, dict) or not isinstance(row.get("image_path"), str) or not isinstance(
                    row.get("bounding_box_annotations"), list):
                issues.append(DataIssue(path, line_no, "image_path / bounding_box_annotations", "",
                                        "each line needs a string image_path and a bounding_box_annotations list"))
                continue
            image = index.find(row["image_path"], path.parent)
            if image is None:
                issues.append(DataIssue(path, line_no, "image_path", row["image_path"],
                                        "image is not in the ground truth"))
                continue
            for i, box in enumerate(row["bounding_box_annotations"]):
                where = f"bounding_box_annotations[{i}]"
                label = box.get("annotation_label") if isinstance(box, dict) else None
                if not isinstance(label, str):
                    issues.append(DataIssue(path, line_no, f"{where}.annotation_label", repr(label)[:80],
                                            "missing or not a string"))
                    continue
                values = [_number(box.get(key), f"{where}.{key}", line_no, path, issues)
                          for key in (*COORD_FIELDS, "score")]
                if None in values:
                    continue
                x1, y1, x2, y2, score = values
                if x2 < x1 or y2 < y1:
                    issues.append(DataIssue(path, line_no, where, repr([x1, y1, x2, y2]),
                                            "x_max must be >= x_min and y_max >= y_min"))
                    continue
                if label not in ids:
                    unknown[label] += 1
                    # An id no category has: COCO ignores it, and it is reported by name.
                    category_id = unknown_ids.setdefault(label, max(ids.values(), default=0) + 1 + len(unknown_ids))
                else:
                    category_id = ids[label]
                width, height = image["width"], image["height"]
                results.append({"image_id": image["id"], "category_id": category_id, "score": score,
                                "bbox": [x1 * width, y1 * height, (x2 - x1) * width, (y2 - y1) * height]})
    if issues:
        raise DataValidationError(issues)
    return results, unknown


def load_coco_results(path: str | Path, gt: dict) -> tuple[list[dict], Counter]:
    path = Path(path)
    results = _read_json(path)
    if not isinstance(results, list):
        raise DataValidationError([DataIssue(path, 0, "", "", "a COCO results file is a JSON list")])
    image_ids = {image["id"] for image in gt["images"]}
    category_ids = {cat["id"] for cat in gt["categories"]}
    issues, unknown = [], Counter()
    for i, result in enumerate(results):
        if not isinstance(result, dict) or any(key not in result for key in ("image_id", "category_id", "bbox", "score")):
            issues.append(DataIssue(path, 0, f"[{i}]", repr(result)[:80], "needs image_id, category_id, bbox, score"))
        elif result["image_id"] not in image_ids:
            issues.append(DataIssue(path, 0, f"[{i}].image_id", repr(result["image_id"]), "image is not in the ground truth"))
        elif result["category_id"] not in category_ids:
            unknown[str(result["category_id"])] += 1
    if issues:
        raise DataValidationError(issues)
    return results, unknown


def score_predictions(gt_path, predictions_path, output_dir=None, classes=None, data_dir=None, strict=True,
                      score_threshold: float = 0.5, iou_threshold: float = 0.5) -> tuple[dict, Path]:
    """Loads both files, computes the metrics, writes ``OUTPUT/metrics.json`` (default: beside the predictions)."""
    gt_path, predictions_path = Path(gt_path), Path(predictions_path)
    gt, class_map = load_ground_truth(gt_path, classes, data_dir, strict)
    if predictions_path.suffix.lower() == ".json":
        results, unknown = load_coco_results(predictions_path, gt)
    else:
        results, unknown = load_jsonl_predictions(predictions_path, gt, gt_path)
    metrics = compute_metrics(gt, results, class_map, score_threshold=score_threshold, iou_threshold=iou_threshold)
    metrics["unknown_predicted_labels"] = dict(sorted(unknown.items()))
    out_dir = Path(output_dir) if output_dir else predictions_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    if gt_path.suffix.lower() != ".json":  # keep the COCO form of JSONL inputs, for other tools
        write_json(gt, out_dir / "ground_truth_coco.json")
        write_json(results, out_dir / "predictions_coco.json")
    metrics_path = write_json({"ground_truth": str(gt_path), "predictions": str(predictions_path), **metrics},
                              out_dir / "metrics.json")
    return metrics, metrics_path


def run_scoring(cfg) -> Path:
    if not cfg.gt or not cfg.predictions:
        raise ValueError("gt=GROUND_TRUTH.jsonl|.json and predictions=PREDICTIONS.jsonl|.json are required")
    classes = list(cfg.classes) if cfg.classes is not None else None
    metrics, path = score_predictions(cfg.gt, cfg.predictions, cfg.output, classes, cfg.data_dir, cfg.strict,
                                      cfg.score_threshold, cfg.iou_threshold)
    print(format_metrics_table(metrics))
    if metrics["unknown_predicted_labels"]:
        print(f"predicted labels not in the ground truth (left out): {metrics['unknown_predicted_labels']}")
    print(f"metrics written to {path}")
    return path
