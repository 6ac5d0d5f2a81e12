"""``trainer/predict.py``: predictions.jsonl in the scoring format, drawn images, round trip through score.py."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from eval_runs import CLASSES, assert_ok, make_run_dir, run_cli
from trainer.evaluation.metrics import STAT_NAMES
from trainer.evaluation.prediction import collect_images
from trainer.evaluation.scoring import score_predictions


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("run"))


@pytest.mark.slow
def test_predict_then_score_equals_evaluate(run_dir, sample_dataset_dir, tmp_path):
    val = sample_dataset_dir / "val.jsonl"
    result = run_cli("predict", f"run_dir={run_dir}", f"images={val}", f"output={tmp_path / 'out'}",
                     "score_threshold=0", "draw=true", "draw_score_threshold=0.02", "num_workers=0", "batch_size=4")
    assert_ok(result)
    lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in val.read_text().splitlines()]
    assert len(lines) == len(records)
    rows = [json.loads(line) for line in lines]
    for row, record in zip(rows, records):
        assert row["image_path"] == str((sample_dataset_dir / record["image_path"]).resolve())
        for box in row["bounding_box_annotations"]:
            assert box["annotation_label"] in CLASSES and 0.0 <= box["score"] <= 1.0
            assert 0.0 <= box["x_min_normalized"] <= box["x_max_normalized"] <= 1.0
            assert 0.0 <= box["y_min_normalized"] <= box["y_max_normalized"] <= 1.0
    assert sum(len(row["bounding_box_annotations"]) for row in rows) > 0
    for row in rows:  # drawn images: one per input, named after it, same size
        source = row["image_path"]
        with Image.open(tmp_path / "out" / "images" / (source.rsplit("/", 1)[-1].rsplit(".", 1)[0] + ".png")) as drawn, \
                Image.open(source) as original:
            assert drawn.size == original.size
    # Round trip: scoring the written predictions gives what the eval command measures on the same split.
    scored, _ = score_predictions(val, tmp_path / "out" / "predictions.jsonl", tmp_path / "scored")
    evaluated = run_cli("evaluate", f"dataset_dir={sample_dataset_dir}", f"run_dir={run_dir}", "num_workers=0",
                        f"output_dir={tmp_path / 'eval'}", "num_visualizations=0")
    assert_ok(evaluated)
    reference = json.loads((tmp_path / "eval" / "custom_detector_metrics.json").read_text())
    assert scored["num_predictions"] == reference["num_predictions"]
    for name in STAT_NAMES:
        if reference["stats"][name] is None:
            assert scored["stats"][name] is None
        else:
            assert scored["stats"][name] == pytest.approx(reference["stats"][name], abs=1e-9), name


def test_collect_images_from_folder_and_jsonl(sample_dataset_dir, tmp_path):
    folder = collect_images(sample_dataset_dir / "data")
    assert folder == sorted(folder) and len(folder) == 24
    assert collect_images(sample_dataset_dir / "val.jsonl")[0].is_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image_path": "nope.png"}\n{"path": 1}\n')
    with pytest.raises(ValueError) as error:
        collect_images(bad)
    assert f"{bad}:1: field 'image_path' (value: nope.png): image not found" in str(error.value)
    assert f"{bad}:2: field 'image_path'" in str(error.value)
    with pytest.raises(FileNotFoundError, match="is not a folder, a .jsonl file or an image file"):
        collect_images(tmp_path / "missing")
