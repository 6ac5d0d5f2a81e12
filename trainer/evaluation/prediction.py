"""The predict command: a trained run's checkpoint on new images -> ``predictions.jsonl`` (+ drawn images).

``predictions.jsonl`` uses the annotation format plus a ``score`` per box, with normalized coordinates,
so it feeds straight into ``trainer/score.py``::

    {"image_path": "/abs/path/img.jpg", "bounding_box_annotations": [{"annotation_label": "cat",
      "x_min_normalized": 0.1, "y_min_normalized": 0.2, "x_max_normalized": 0.5, "y_max_normalized": 0.9,
      "score": 0.93}]}
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from trainer.data.classes import ClassMap
from trainer.data.images import image_size, read_image
from trainer.data.records import DataIssue, DataValidationError, resolve_image_path
from trainer.evaluation.distributed import build_accelerator, predict_distributed
from trainer.evaluation.predictors import load_predictor
from trainer.evaluation.runner import load_run
from trainer.evaluation.visualize import draw_predictions, save_image, unique_output_names

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def collect_images(source: str | Path, data_dir: str | Path | None = None) -> list[Path]:
    """Image files of a folder (recursive, sorted), the ``image_path`` of each line of a JSONL file, or one image."""
    source = Path(source)
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if source.suffix.lower() == ".jsonl":
        return _jsonl_image_paths(source, Path(data_dir) if data_dir else None)
    if source.is_file() and source.suffix.lower() in IMAGE_SUFFIXES:
        return [source]
    raise FileNotFoundError(f"images={str(source)!r} is not a folder, a .jsonl file or an image file")


def _jsonl_image_paths(path: Path, data_dir: Path | None) -> list[Path]:
    paths, issues = [], []
    with open(path, encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)["image_path"]
                if not isinstance(raw, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                issues.append(DataIssue(path, line_no, "image_path", line.strip()[:80],
                                        "each line needs a JSON object with a string image_path"))
                continue
            resolved, tried = resolve_image_path(raw, path, data_dir)
            if resolved is None:
                issues.append(DataIssue(path, line_no, "image_path", raw,
                                        "image not found; tried: " + ", ".join(map(str, tried))))
            else:
                paths.append(resolved)
    if issues:
        raise DataValidationError(issues)
    return paths


class ImageFiles(Dataset):
    """``dataset[i] -> (float32 [3, H, W] in [0, 1], {"image_id": i})`` for a list of image files."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return F.to_dtype(read_image(self.paths[index]), torch.float32, scale=True), {"image_id": index}


def prediction_row(path: Path, prediction: Mapping[str, np.ndarray], class_map: ClassMap,
                   score_threshold: float) -> dict:
    """One ``predictions.jsonl`` line: boxes above the threshold, normalized by the image's size."""
    width, height = image_size(path)
    boxes = []
    for (x1, y1, x2, y2), score, label in zip(prediction["boxes"].tolist(), prediction["scores"].tolist(),
                                              prediction["labels"].tolist()):
        if score < score_threshold:
            continue
        boxes.append({"annotation_label": class_map.name_of(label),
                      "x_min_normalized": min(max(x1 / width, 0.0), 1.0),
                      "y_min_normalized": min(max(y1 / height, 0.0), 1.0),
                      "x_max_normalized": min(max(x2 / width, 0.0), 1.0),
                      "y_max_normalized": min(max(y2 / height, 0.0), 1.0),
                      "score": score})
    return {"image_path": str(path.resolve()), "bounding_box_annotations": boxes}


def run_prediction(cfg) -> Path | None:
    """Runs the predict command for the config in configs/predict.yaml; returns predictions.jsonl (main process)."""
    if not cfg.run_dir or not cfg.images or not cfg.output:
        raise ValueError("run_dir=RUN, images=DIR_OR_JSONL and output=OUT are required")
    run_dir, out_dir = Path(cfg.run_dir), Path(cfg.output)
    _, class_map = load_run(run_dir)
    paths = collect_images(cfg.images, cfg.data_dir)
    if not paths:
        raise ValueError(f"no images found in {cfg.images} (looked for {', '.join(IMAGE_SUFFIXES)})")
    checkpoint = Path(cfg.checkpoint_path) if cfg.checkpoint_path else run_dir / "best_model.pth"
    accelerator = build_accelerator(cpu=cfg.cpu)
    predictor, _ = load_predictor(checkpoint, class_map, use_ema=cfg.use_ema, device=accelerator.device)
    predictions = predict_distributed(predictor, ImageFiles(paths), accelerator, batch_size=cfg.batch_size,
                                      num_workers=cfg.num_workers, progress=True, image_paths=paths)
    if not accelerator.is_main_process:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    out_file = out_dir / "predictions.jsonl"
    with open(out_file, "w", encoding="utf-8") as fh:
        for image_id, path in enumerate(paths):
            row = prediction_row(path, predictions[image_id], class_map, cfg.score_threshold)
            fh.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
    if cfg.draw:
        names = unique_output_names(paths)
        for image_id, path in enumerate(paths):
            drawn = draw_predictions(read_image(path), predictions[image_id], class_map, cfg.draw_score_threshold)
            save_image(drawn, out_dir / "images" / names[image_id])
    num_boxes = sum(int((p["scores"] >= cfg.score_threshold).sum()) for p in predictions.values())
    print(f"{num_boxes} boxes on {len(paths)} images written to {out_file}")
    return out_file
