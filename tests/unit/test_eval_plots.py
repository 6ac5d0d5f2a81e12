"""Precision-recall and confusion-matrix figures, and drawn detection pictures."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trainer.data.classes import ClassMap
from trainer.data.records import BoxAnnotation, Record
from trainer.evaluation.plots import plot_confusion_matrix, plot_precision_recall
from trainer.evaluation.visualize import draw_predictions, save_visualizations, unique_output_names

CLASS_MAP = ClassMap(["cat", "dog"])


def test_plots_are_png_images(tmp_path):
    recall = np.linspace(0, 1, 101)
    pr = plot_precision_recall(recall, {"cat": 1 - recall, "dog": np.ones(101)}, tmp_path / "pr.png",
                               ap50={"cat": 0.5, "dog": 1.0})
    empty = plot_precision_recall(recall, {}, tmp_path / "empty.png")
    cm = plot_confusion_matrix([[3, 1, 0], [0, 2, 1], [1, 0, 0]], ["cat", "dog", "background"], tmp_path / "cm.png")
    for path in (pr, empty, cm):
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) >= 400
            assert len(set(np.asarray(image.convert("L")).ravel().tolist())) > 10  # something was drawn


def test_drawn_boxes_change_only_pixels_near_them():
    image = torch.full((3, 60, 80), 128, dtype=torch.uint8)
    prediction = {"boxes": np.array([[10, 10, 30, 30], [50, 5, 70, 25]], dtype=np.float32),
                  "scores": np.array([0.9, 0.2]), "labels": np.array([1, 2])}
    drawn = draw_predictions(image, prediction, CLASS_MAP, score_threshold=0.5,
                             ground_truth=[("dog", [40.0, 35.0, 75.0, 55.0])])
    assert drawn.shape == image.shape and drawn.dtype == torch.uint8
    changed = (drawn != image).any(dim=0)
    assert changed[10, 10:31].all()  # the kept prediction's top edge
    assert changed[35, 40:76].all()  # the ground truth's top edge
    assert not changed[5, 50:71].any()  # the low-score prediction is not drawn
    assert (drawn[:, 10, 20] == torch.tensor([255, 40, 40], dtype=torch.uint8)).all()
    assert (drawn[:, 55, 60] == torch.tensor([0, 200, 0], dtype=torch.uint8)).all()


def test_visualizations_are_a_seeded_sample_named_by_image(tmp_path):
    records = []
    for i, name in enumerate(["a/img.png", "b/img.png", "c.png", "d.png", "e.png"]):
        path = tmp_path / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40 + i, 30)).save(path)
        records.append(Record(path, (BoxAnnotation("cat", 0.1, 0.1, 0.5, 0.5),), tmp_path / "x.jsonl", i + 1))
    predictions = {i: {"boxes": np.array([[1, 1, 9, 9]], np.float32), "scores": np.array([0.9]),
                       "labels": np.array([2])} for i in range(5)}
    first = save_visualizations(records, predictions, CLASS_MAP, tmp_path / "vis", num_images=3, seed=1)
    again = save_visualizations(records, predictions, CLASS_MAP, tmp_path / "vis2", num_images=3, seed=1)
    assert [p.name for p in first] == [p.name for p in again] and len(first) == 3
    all_names = {p.name for p in save_visualizations(records, predictions, CLASS_MAP, tmp_path / "all", num_images=99)}
    assert all_names == {"img_0.png", "img_1.png", "c.png", "d.png", "e.png"}
    for name, record in zip(["img_0.png", "img_1.png", "c.png", "d.png", "e.png"], records):
        with Image.open(tmp_path / "all" / name) as drawn, Image.open(record.image_path) as source:
            assert drawn.size == source.size  # images differ in width: each file is its own image


def test_unique_output_names():
    assert unique_output_names([Path("x/a.jpg"), Path("y/a.png"), Path("b.jpg")]) == ["a_0.png", "a_1.png", "b.png"]
