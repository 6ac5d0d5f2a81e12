"""Validate a JSONL dataset and summarise it (the work behind ``trainer/check_data.py``)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence

from trainer.data.classes import ClassMap
from trainer.data.builder import drop_unreadable_images
from trainer.data.images import image_size
from trainer.data.records import DataIssue, DataValidationError, Record, ValidationReport, load_records

# COCO's object-size buckets, by box area in pixels.
SMALL_AREA, MEDIUM_AREA = 32 ** 2, 96 ** 2


@dataclass
class CheckResult:
    usable: bool
    errors: list[DataIssue] = field(default_factory=list)  # what makes the data unusable under the policy
    report: ValidationReport = field(default_factory=ValidationReport)  # counted warnings
    summary: dict = field(default_factory=dict)


def check_dataset(jsonl: str | Path, data_dir: str | Path | None = None, classes: Sequence[str] | None = None,
                  strict: bool = True, clip_tolerance: float = 0.01, decode_images: bool = True,
                  max_image_pixels: int | None = None) -> CheckResult:
    """Everything training would reject (``strict``) or silently drop, plus dataset statistics.

    Under ``strict`` the file is parsed a second time leniently, so the summary still describes the
    usable part while every error is listed.
    """
    jsonl = Path(jsonl)
    errors: list[DataIssue] = []
    try:
        records, report = load_records(jsonl, data_dir, strict=strict, clip_tolerance=clip_tolerance)
    except DataValidationError as exc:
        errors.extend(exc.issues)
        if not jsonl.is_file():
            return CheckResult(False, errors)
        records, report = load_records(jsonl, data_dir, strict=False, clip_tolerance=clip_tolerance)

    readable, image_errors = drop_unreadable_images(records, report, strict, max_image_pixels, decode=decode_images)
    errors.extend(image_errors)
    sizes = {record.image_path: image_size(record.image_path, max_image_pixels) for record in readable}  # cached

    labels = [box.label for record in readable for box in record.boxes]
    try:
        class_map = ClassMap.from_labels(labels, list(classes) if classes is not None else None)
    except ValueError as exc:
        errors.append(DataIssue(jsonl, 0, "annotation_label", "", str(exc)))
        class_map = None
    summary = _summarise(readable, sizes, class_map)
    if not readable:
        errors.append(DataIssue(jsonl, 0, "", "", "no usable images"))
    elif summary["boxes"] == 0:
        errors.append(DataIssue(jsonl, 0, "bounding_box_annotations", "", "no usable boxes of any class"))
    return CheckResult(not errors, errors, report, summary)


def _summarise(records: list[Record], sizes: dict[Path, tuple[int, int]], class_map: ClassMap | None) -> dict:
    boxes_per_class: Counter = Counter()
    dropped: Counter = Counter()
    box_sizes: Counter = Counter({"small": 0, "medium": 0, "large": 0})
    negatives = 0
    for record in records:
        width, height = sizes[record.image_path]
        kept = [b for b in record.boxes if class_map is not None and b.label in class_map]
        dropped.update(b.label for b in record.boxes if class_map is None or b.label not in class_map)
        negatives += not kept
        for box in kept:
            boxes_per_class[box.label] += 1
            area = (box.x_max - box.x_min) * width * (box.y_max - box.y_min) * height
            box_sizes["small" if area < SMALL_AREA else "medium" if area < MEDIUM_AREA else "large"] += 1
    image_sizes = Counter(sizes[r.image_path] for r in records)
    return {
        "images": len(records),
        "negatives": negatives,
        "boxes": sum(boxes_per_class.values()),
        "classes": list(class_map.names) if class_map is not None else [],
        "boxes_per_class": {name: boxes_per_class[name] for name in (class_map.names if class_map else [])},
        "dropped_labels": dict(sorted(dropped.items())),
        "image_sizes": {f"{w}x{h}": n for (w, h), n in image_sizes.most_common()},
        "box_sizes": dict(box_sizes),
    }


def format_result(result: CheckResult, jsonl: str | Path, max_listed: int = 50) -> str:
    s = result.summary
    lines = [f"dataset: {jsonl}"]
    if s:
        lines += [f"images: {s['images']} ({s['negatives']} without boxes)", f"boxes: {s['boxes']}",
                  f"classes ({len(s['classes'])}, ids 1..{len(s['classes'])} in this order):"]
        lines += [f"  {i}. {name}: {s['boxes_per_class'][name]} boxes" for i, name in enumerate(s["classes"], 1)]
        if s["dropped_labels"]:
            lines.append("dropped labels (not in classes): "
                         + ", ".join(f"{k}: {v}" for k, v in s["dropped_labels"].items()))
        shown = list(s["image_sizes"].items())
        lines.append(f"image sizes (WxH, {len(shown)} distinct): "
                     + ", ".join(f"{k}: {v}" for k, v in shown[:10]) + (" ..." if len(shown) > 10 else ""))
        lines.append("box sizes (COCO area): " + ", ".join(f"{k}: {v}" for k, v in s["box_sizes"].items()))
    counts = result.report.counts
    if counts:
        lines.append("warnings (fixed or dropped): " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
        lines += [f"  {w}" for w in result.report.warnings[:max_listed]]
        if len(result.report.warnings) > max_listed:
            lines.append(f"  ... and {len(result.report.warnings) - max_listed} more")
    if result.errors:
        lines.append(f"ERRORS ({len(result.errors)}):")
        lines += [f"  {e}" for e in result.errors[:max_listed]]
        if len(result.errors) > max_listed:
            lines.append(f"  ... and {len(result.errors) - max_listed} more")
    lines.append("result: " + ("usable" if result.usable else "NOT usable"))
    return "\n".join(lines)
