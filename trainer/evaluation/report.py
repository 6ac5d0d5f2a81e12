"""Writing metrics as strict JSON and printing them as a per-class table."""
from __future__ import annotations

import json
import os
from pathlib import Path

from trainer.evaluation.metrics import STAT_NAMES


def write_json(data, path: str | Path) -> Path:
    """Atomic write; ``allow_nan=False`` guarantees the file is standard JSON (undefined numbers are null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _number(value: float | None) -> str:
    return "   -  " if value is None else f"{value:6.3f}"


def format_metrics_table(metrics: dict) -> str:
    """COCO stats on two lines, then one row per class with counts and the operating-point numbers."""
    stats = metrics["stats"]
    lines = ["  ".join(f"{name}={_number(stats[name]).strip()}" for name in STAT_NAMES[:6]),
             "  ".join(f"{name}={_number(stats[name]).strip()}" for name in STAT_NAMES[6:])]
    width = max([len("class")] + [len(name) for name in metrics["per_class"]])
    header = (f"{'class':<{width}}  {'#gt':>6}  {'#pred':>6}  {'AP':>6}  {'AP50':>6}  "
              f"{'P':>6}  {'R':>6}  {'F1':>6}")
    lines += ["", f"per class (P/R/F1 at score >= {metrics['score_threshold']:g}, IoU >= {metrics['iou_threshold']:g}):",
              header, "-" * len(header)]
    for name, row in metrics["per_class"].items():
        note = "" if row["has_ground_truth"] else "  (no ground truth in this split)"
        lines.append(f"{name:<{width}}  {row['num_ground_truth']:>6}  {row['num_predictions']:>6}  "
                     f"{_number(row['AP'])}  {_number(row['AP50'])}  {_number(row['precision'])}  "
                     f"{_number(row['recall'])}  {_number(row['f1'])}{note}")
    macro = metrics["macro"]
    lines.append(f"{'macro':<{width}}  {'':>6}  {'':>6}  {_number(stats['AP'])}  {_number(stats['AP50'])}  "
                 f"{_number(macro['precision'])}  {_number(macro['recall'])}  {_number(macro['f1'])}")
    if metrics.get("unknown_predicted_category_ids"):
        lines.append(f"predictions with category ids not in the ground truth (ignored): "
                     f"{metrics['unknown_predicted_category_ids']}")
    return "\n".join(lines)
