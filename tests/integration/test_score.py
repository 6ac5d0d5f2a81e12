"""``trainer/score.py``: JSONL and COCO inputs give pycocotools' numbers; unknown labels; bad lines."""
from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from PIL import Image

from eval_runs import assert_ok, run_cli
from trainer.data.records import DataValidationError
from trainer.evaluation.metrics import STAT_NAMES
from trainer.evaluation.scoring import score_predictions


def pycocotools_stats(gt: dict, results: list[dict]) -> np.ndarray:
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
    return evaluator.stats


@pytest.fixture(scope="module")
def noisy_predictions(sample_dataset_dir, tmp_path_factory):
    """Predictions JSONL (jittered, relabelled, missed and spurious boxes) and the same set in COCO form,
    built independently of the trainer's own conversion code."""
    rng = np.random.default_rng(0)
    names = ["circle", "square", "triangle"]
    rows = [json.loads(line) for line in (sample_dataset_dir / "dataset.jsonl").read_text().splitlines()]
    images, annotations, results, prediction_rows = [], [], [], []
    for image_id, row in enumerate(rows):
        with Image.open(sample_dataset_dir / row["image_path"]) as image:
            width, height = image.size
        images.append({"id": image_id, "file_name": row["image_path"], "width": width, "height": height})
        boxes = []
        for box in row["bounding_box_annotations"]:
            x1, y1, x2, y2 = (box[k] for k in ("x_min_normalized", "y_min_normalized", "x_max_normalized", "y_max_normalized"))
            category = names.index(box["annotation_label"]) + 1
            w, h = (x2 - x1) * width, (y2 - y1) * height
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x1 * width, y1 * height, w, h], "area": w * h, "iscrowd": 0})
            if rng.random() < 0.8:
                jitter = rng.normal(0, 0.02, 4)
                label = box["annotation_label"] if rng.random() < 0.85 else names[rng.integers(3)]
                boxes.append((label, x1 + jitter[0], y1 + jitter[1], max(x2 + jitter[2], x1 + 0.01),
                              max(y2 + jitter[3], y1 + 0.01), float(rng.random())))
        for _ in range(int(rng.integers(0, 3))):
            x, y = rng.uniform(0, 0.7, 2)
            boxes.append((names[rng.integers(3)], x, y, x + 0.2, y + 0.25, float(rng.random())))
        for label, x1, y1, x2, y2, score in boxes:
            results.append({"image_id": image_id, "category_id": names.index(label) + 1, "score": score,
                            "bbox": [x1 * width, y1 * height, (x2 - x1) * width, (y2 - y1) * height]})
        prediction_rows.append({"image_path": row["image_path"], "bounding_box_annotations": [
            {"annotation_label": label, "x_min_normalized": x1, "y_min_normalized": y1, "x_max_normalized": x2,
             "y_max_normalized": y2, "score": score} for label, x1, y1, x2, y2, score in boxes]})
    out = tmp_path_factory.mktemp("score")
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prediction_rows))
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
    (out / "gt.json").write_text(json.dumps(gt))
    (out / "results.json").write_text(json.dumps(results))
    return out, gt, results


def test_jsonl_inputs_reproduce_pycocotools(sample_dataset_dir, noisy_predictions, tmp_path):
    folder, gt, results = noisy_predictions
    expected = pycocotools_stats(gt, results)
    assert (expected > 0).sum() >= 8  # a real spread of numbers, not all zeros
    result = run_cli("score", f"gt={sample_dataset_dir / 'dataset.jsonl'}", f"predictions={folder / 'predictions.jsonl'}",
                     f"output={tmp_path}")
    assert_ok(result)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    got = [metrics["stats"][name] if metrics["stats"][name] is not None else -1.0 for name in STAT_NAMES]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert "circle" in result.stdout and f"metrics written to {tmp_path / 'metrics.json'}" in result.stdout
    # The COCO form of the JSONL inputs is kept for other tools, and scores the same with pycocotools.
    converted = pycocotools_stats(json.loads((tmp_path / "ground_truth_coco.json").read_text()),
                                  json.loads((tmp_path / "predictions_coco.json").read_text()))
    np.testing.assert_allclose(converted, expected, rtol=0, atol=1e-12)


def test_coco_inputs_reproduce_pycocotools(noisy_predictions, tmp_path):
    folder, gt, results = noisy_predictions
    metrics, path = score_predictions(folder / "gt.json", folder / "results.json", output_dir=tmp_path)
    got = [metrics["stats"][name] if metrics["stats"][name] is not None else -1.0 for name in STAT_NAMES]
    np.testing.assert_allclose(got, pycocotools_stats(gt, results), rtol=0, atol=1e-12)
    assert path == tmp_path / "metrics.json" and not (tmp_path / "ground_truth_coco.json").exists()


def test_predicted_labels_missing_from_the_ground_truth_are_reported(sample_dataset_dir, noisy_predictions, tmp_path):
    folder, _, _ = noisy_predictions
    base, _ = score_predictions(sample_dataset_dir / "dataset.jsonl", folder / "predictions.jsonl", tmp_path / "a")
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    rows[0]["bounding_box_annotations"].append({"annotation_label": "hexagon", "x_min_normalized": 0.1,
                                                "y_min_normalized": 0.1, "x_max_normalized": 0.4,
                                                "y_max_normalized": 0.4, "score": 0.99})
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics, _ = score_predictions(sample_dataset_dir / "dataset.jsonl", extra, tmp_path / "b")
    assert metrics["unknown_predicted_labels"] == {"hexagon": 1}
    assert metrics["stats"] == base["stats"] and metrics["per_class"] == base["per_class"]


def test_bad_prediction_lines_name_file_line_and_field(sample_dataset_dir, tmp_path):
    first = json.loads((sample_dataset_dir / "dataset.jsonl").read_text().splitlines()[0])["image_path"]
    bad = tmp_path / "bad.jsonl"
    box = {"annotation_label": "circle", "x_min_normalized": 0.1, "y_min_normalized": 0.1,
           "x_max_normalized": 0.2, "y_max_normalized": 0.2}
    bad.write_text("\n".join([
        json.dumps({"image_path": first, "bounding_box_annotations": [box]}),  # no score
        json.dumps({"image_path": "nowhere.png", "bounding_box_annotations": []}),
        "{not json",
        json.dumps({"image_path": first, "bounding_box_annotations": [{**box, "score": 0.5, "x_max_normalized": 0.0}]}),
    ]) + "\n")
    with pytest.raises(DataValidationError) as error:
        score_predictions(sample_dataset_dir / "dataset.jsonl", bad, tmp_path)
    message = str(error.value)
    assert f"{bad}:1: field 'bounding_box_annotations[0].score'" in message
    assert f"{bad}:2: field 'image_path' (value: nowhere.png): image is not in the ground truth" in message
    assert f"{bad}:3:" in message and "malformed JSON" in message
    assert f"{bad}:4: field 'bounding_box_annotations[0]'" in message


def test_images_match_by_path_relative_to_either_file(sample_dataset_dir, noisy_predictions, tmp_path, monkeypatch):
    """Relative paths resolve against the predictions' and the ground truth's folders, not the working directory."""
    folder, gt, results = noisy_predictions
    monkeypatch.chdir(sample_dataset_dir.parent)
    relative_gt = sample_dataset_dir.relative_to(sample_dataset_dir.parent) / "dataset.jsonl"
    metrics, _ = score_predictions(relative_gt, folder / "predictions.jsonl", tmp_path)  # paths like data/x.png
    expected = pycocotools_stats(gt, results)
    np.testing.assert_allclose([metrics["stats"][n] if metrics["stats"][n] is not None else -1.0 for n in STAT_NAMES],
                               expected, rtol=0, atol=1e-12)


def test_image_index_prefers_the_same_file_over_the_same_name(tmp_path):
    from trainer.evaluation.scoring import _ImageIndex

    gt = {"images": [{"id": 0, "file_name": str(tmp_path / "a" / "x.png")},
                     {"id": 1, "file_name": str(tmp_path / "b" / "x.png")},
                     {"id": 2, "file_name": "c/y.png"}]}
    index = _ImageIndex(gt, tmp_path / "gt.json")
    assert index.find("b/x.png", tmp_path)["id"] == 1
    assert index.find(str(tmp_path / "a" / "x.png"), tmp_path / "elsewhere")["id"] == 0
    assert index.find("x.png", tmp_path / "elsewhere") is None  # two images are called x.png
    assert index.find("/other/place/y.png", tmp_path / "elsewhere")["id"] == 2  # unique name
