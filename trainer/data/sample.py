"""A deterministic synthetic detection dataset: filled circles, squares and triangles on noisy backgrounds.

It is what the demo and the fast tests train on. Every image draws from its own random stream
(seeded by ``(seed, index)``), so the same seed always writes byte-identical files.
"""
from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")
# Each class gets its own hue band (red-ish, green-ish, blue-ish) with jitter: distinct but not constant.
_CLASS_HUES = {"circle": 0.0, "square": 0.33, "triangle": 0.62}
NEGATIVE_EVERY = 10  # images 5, 15, 25, ... have no objects, so even tiny datasets contain negatives
JPEG_EVERY = 5  # every 5th image is a JPEG, the rest PNG, so both decoders are exercised
MAX_OBJECTS = 4
MAX_OVERLAP_IOU = 0.1  # little occlusion: a box should match what is visible


def _box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _class_colour(rng: np.random.Generator, label: str) -> tuple[int, int, int]:
    hue = (_CLASS_HUES[label] + rng.uniform(-0.05, 0.05)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.65, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A dim random gradient plus Gaussian noise, so shapes sit on texture, not a flat colour."""
    start = rng.uniform(40, 140, size=3)
    end = rng.uniform(40, 140, size=3)
    ramp = np.linspace(0.0, 1.0, width if rng.random() < 0.5 else height)
    ramp = ramp[None, :, None] if ramp.size == width else ramp[:, None, None]
    image = start + (end - start) * ramp
    image = np.broadcast_to(image, (height, width, 3))
    return image + rng.normal(0.0, 12.0, size=(height, width, 3))


def _shape_box(rng: np.random.Generator, width: int, height: int) -> tuple[float, float, float, float]:
    side = rng.uniform(0.12, 0.45) * min(width, height)
    x0 = rng.uniform(0, width - side)
    y0 = rng.uniform(0, height - side)
    return (x0, y0, x0 + side, y0 + side)


def _draw_shape(draw: ImageDraw.ImageDraw, label: str, box: tuple[float, float, float, float],
                colour: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """Draws ``label`` filling ``box``; returns the tight pixel box (x_min, y_min, x_max, y_max)."""
    x0, y0, x1, y1 = (round(v) for v in box)
    if label == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=colour)
    elif label == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=colour)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=colour)
    return (x0, y0, x1, y1)


def render_sample_image(seed: int, index: int, width: int, height: int) -> tuple[Image.Image, list[dict]]:
    """Renders image ``index`` of the dataset with ``seed``; returns the image and its JSONL annotations."""
    rng = np.random.default_rng([seed, index])
    pixels = _background(rng, width, height)
    canvas = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    num_objects = 0 if index % NEGATIVE_EVERY == NEGATIVE_EVERY // 2 else int(rng.integers(1, MAX_OBJECTS + 1))
    placed: list[tuple[float, ...]] = []
    annotations = []
    for _ in range(num_objects):
        label = CLASSES[int(rng.integers(len(CLASSES)))]
        colour = _class_colour(rng, label)
        for _attempt in range(10):  # skip the object when no spot with little overlap is found
            box = _shape_box(rng, width, height)
            if all(_box_iou(box, other) < MAX_OVERLAP_IOU for other in placed):
                break
        else:
            continue
        x0, y0, x1, y1 = _draw_shape(draw, label, box, colour)
        placed.append((x0, y0, x1, y1))
        annotations.append({
            "annotation_label": label,
            "x_min_normalized": x0 / width, "y_min_normalized": y0 / height,
            "x_max_normalized": x1 / width, "y_max_normalized": y1 / height,
        })
    # Noise on top too, so objects are textured rather than flat fills.
    noisy = np.asarray(canvas, dtype=np.float64) + rng.normal(0.0, 6.0, size=(height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), annotations


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def generate_sample_dataset(
    out_dir: str | Path,
    num_images: int = 200,
    seed: int = 0,
    image_size: tuple[int, int] = (256, 192),
    val_fraction: float = 0.2,
) -> Path:
    """Writes ``out_dir/{dataset,train,val}.jsonl`` and ``out_dir/data/*.png|jpg``; returns ``out_dir``.

    ``image_size`` is (width, height). The val split is a seeded ``val_fraction`` of the images
    (at least one each way when there are two or more images).
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    width, height = (int(v) for v in image_size)
    if width < 16 or height < 16:
        raise ValueError(f"image_size must be at least 16x16, got {width}x{height}")
    out_dir = Path(out_dir)
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)

    rows = []
    for index in range(num_images):
        image, annotations = render_sample_image(seed, index, width, height)
        is_jpeg = index % JPEG_EVERY == JPEG_EVERY - 1
        name = f"sample_{index:05d}.{'jpg' if is_jpeg else 'png'}"
        if is_jpeg:
            image.save(data_dir / name, format="JPEG", quality=92)
        else:
            image.save(data_dir / name, format="PNG")
        rows.append({"image_path": f"data/{name}", "bounding_box_annotations": annotations})

    num_val = int(round(val_fraction * num_images))
    if val_fraction > 0 and num_images >= 2:
        num_val = min(max(num_val, 1), num_images - 1)
    order = np.random.default_rng([seed, num_images]).permutation(num_images)
    val_ids = set(order[:num_val].tolist())
    _write_jsonl(out_dir / "dataset.jsonl", rows)
    _write_jsonl(out_dir / "train.jsonl", [r for i, r in enumerate(rows) if i not in val_ids])
    _write_jsonl(out_dir / "val.jsonl", [r for i, r in enumerate(rows) if i in val_ids])
    return out_dir
