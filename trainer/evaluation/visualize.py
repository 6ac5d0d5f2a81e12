"""Images with predicted and ground-truth boxes drawn on them."""
from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes

from trainer.data.classes import ClassMap
from trainer.data.images import read_image
from trainer.data.records import Record

GROUND_TRUTH_COLOUR = (0, 200, 0)
PREDICTION_COLOUR = (255, 40, 40)


def draw_predictions(
    image: torch.Tensor,
    prediction: Mapping[str, np.ndarray] | None,
    class_map: ClassMap,
    score_threshold: float = 0.5,
    ground_truth: Sequence[tuple[str, Sequence[float]]] = (),
) -> torch.Tensor:
    """uint8 [3,H,W] image with ground truth (green, label) and predictions >= threshold (red, label + score)."""
    if ground_truth:
        gt_boxes = torch.tensor([list(box) for _, box in ground_truth], dtype=torch.float32)
        image = draw_bounding_boxes(image, gt_boxes, labels=[label for label, _ in ground_truth],
                                    colors=GROUND_TRUTH_COLOUR, width=2)
    if prediction is not None:
        keep = np.asarray(prediction["scores"]) >= score_threshold
        boxes = torch.as_tensor(np.asarray(prediction["boxes"])[keep], dtype=torch.float32).reshape(-1, 4)
        if len(boxes):
            labels = [f"{_label_name(class_map, int(label))} {score:.2f}"
                      for label, score in zip(np.asarray(prediction["labels"])[keep], np.asarray(prediction["scores"])[keep])]
            image = draw_bounding_boxes(image, boxes, labels=labels, colors=PREDICTION_COLOUR, width=2)
    return image


def _label_name(class_map: ClassMap, label: int) -> str:
    return class_map.name_of(label) if 1 <= label <= class_map.num_classes else f"id{label}"


def record_ground_truth(record: Record, width: int, height: int) -> list[tuple[str, list[float]]]:
    """A record's boxes as (label, xyxy pixels)."""
    return [(box.label, [box.x_min * width, box.y_min * height, box.x_max * width, box.y_max * height])
            for box in record.boxes]


def save_image(image: torch.Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(path)
    return path


def unique_output_names(paths: Sequence[Path], suffix: str = ".png") -> list[str]:
    """File names from image stems; a stem shared by several images gets its index appended."""
    stems = [Path(p).stem for p in paths]
    counts = {stem: stems.count(stem) for stem in set(stems)}
    return [f"{stem}{suffix}" if counts[stem] == 1 else f"{stem}_{i}{suffix}" for i, stem in enumerate(stems)]


def save_visualizations(
    records: Sequence[Record],
    predictions: Mapping[int, Mapping[str, np.ndarray]],
    class_map: ClassMap,
    out_dir: str | Path,
    num_images: int = 16,
    seed: int = 0,
    score_threshold: float = 0.5,
) -> list[Path]:
    """Draws a seeded random sample of ``num_images`` records; files are named after the images."""
    indices = sorted(random.Random(seed).sample(range(len(records)), min(num_images, len(records))))
    names = unique_output_names([record.image_path for record in records])
    written = []
    for image_id in indices:
        record = records[image_id]
        image = read_image(record.image_path)
        drawn = draw_predictions(image, predictions.get(image_id), class_map, score_threshold,
                                 record_ground_truth(record, image.shape[-1], image.shape[-2]))
        written.append(save_image(drawn, Path(out_dir) / names[image_id]))
    return written
