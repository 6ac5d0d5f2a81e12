"""``trainer/evaluate.py`` end to end: every output file, 1 vs 2 processes, EMA weights, ONNX, bad input."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from eval_runs import CLASSES, REPO, assert_ok, make_run_dir, run_cli
from hydra import compose, initialize_config_dir
from trainer.data.classes import ClassMap
from trainer.evaluation.cli import run_command
from trainer.evaluation.predictors import load_predictor
from trainer.evaluation.runner import evaluate_run

NUM_IMAGES = 7  # odd: two processes get 4 and 3 images


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def odd_split(sample_dataset_dir, tmp_path_factory):
    """The first 7 images of the sample data, image paths made absolute."""
    out = tmp_path_factory.mktemp("split") / "odd.jsonl"
    lines = (sample_dataset_dir / "dataset.jsonl").read_text().splitlines()[:NUM_IMAGES]
    rows = [json.loads(line) for line in lines]
    for row in rows:
        row["image_path"] = str(sample_dataset_dir / row["image_path"])
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return out


@pytest.fixture(scope="module")
def single_process(run_dir, sample_dataset_dir, odd_split):
    result = run_cli("evaluate", f"dataset_dir={sample_dataset_dir}", f"run_dir={run_dir}", f"split={odd_split}",
                     "num_workers=0", "batch_size=2", "num_visualizations=5")
    assert_ok(result)
    return result, run_dir / f"eval_{sample_dataset_dir.name}_odd_best_model_pytorch"


def test_writes_every_output(single_process, sample_dataset_dir):
    result, out = single_process
    names = {p.name for p in out.iterdir()}
    assert names == {"ground_truth_coco.json", "custom_detector_predictions.json", "custom_detector_metrics.json",
                     "visualizations", "precision_recall.png", "confusion_matrix.png"}
    metrics = json.loads((out / "custom_detector_metrics.json").read_text(), parse_constant=pytest.fail)
    assert metrics["checkpoint"]["format"] == "pytorch" and metrics["checkpoint"]["path"].endswith("best_model.pth")
    assert metrics["dataset"]["num_images"] == NUM_IMAGES and metrics["dataset"]["split"].endswith("odd.jsonl")
    assert (metrics["score_threshold"], metrics["iou_threshold"]) == (0.5, 0.5)
    assert list(metrics["per_class"]) == list(CLASSES)
    gt = json.loads((out / "ground_truth_coco.json").read_text())
    assert [image["id"] for image in gt["images"]] == list(range(NUM_IMAGES))
    predictions = json.loads((out / "custom_detector_predictions.json").read_text())
    assert predictions and {p["image_id"] for p in predictions} <= set(range(NUM_IMAGES))
    assert metrics["num_predictions"] == len(predictions)
    # The per-class table is printed.
    for name in CLASSES:
        assert name in result.stdout
    assert "AP50" in result.stdout


def test_pictures_are_real_images_of_the_right_size(single_process):
    _, out = single_process
    drawn = sorted((out / "visualizations").iterdir())
    gt = json.loads((out / "ground_truth_coco.json").read_text())
    sizes = {image["file_name"].rsplit("/", 1)[-1]: (image["width"], image["height"]) for image in gt["images"]}
    assert len(drawn) == 5
    for path in drawn:
        assert path.name in sizes  # named after the image it shows
        with Image.open(path) as image:
            image.load()
            assert image.format == "PNG" and image.size == sizes[path.name]
    for name in ("precision_recall.png", "confusion_matrix.png"):
        with Image.open(out / name) as image:
            image.load()
            assert image.format == "PNG" and min(image.size) >= 400


def test_two_processes_give_identical_results(single_process, run_dir, sample_dataset_dir, odd_split, tmp_path):
    _, out = single_process
    result = run_cli("evaluate", f"dataset_dir={sample_dataset_dir}", f"run_dir={run_dir}", f"split={odd_split}",
                     "num_workers=0", "batch_size=2", "num_visualizations=5", f"output_dir={tmp_path}", processes=2)
    assert_ok(result)
    assert "with 2 process(es)" in result.stdout + result.stderr
    one = json.loads((out / "custom_detector_metrics.json").read_text())
    two = json.loads((tmp_path / "custom_detector_metrics.json").read_text())
    assert one == two
    key = lambda p: (p["image_id"], -p["score"], p["category_id"], p["bbox"])  # noqa: E731
    predictions_one = sorted(json.loads((out / "custom_detector_predictions.json").read_text()), key=key)
    predictions_two = sorted(json.loads((tmp_path / "custom_detector_predictions.json").read_text()), key=key)
    assert predictions_one == predictions_two
    assert {p["image_id"] for p in predictions_two} == set(range(NUM_IMAGES))  # every image predicted once
    assert len({p.name for p in (tmp_path / "visualizations").iterdir()}) == 5


def test_ema_weights_are_used_when_present(run_dir):
    checkpoint = torch.load(run_dir / "best_model.pth", weights_only=True)
    class_map = ClassMap(CLASSES)
    with_ema, _ = load_predictor(run_dir / "best_model.pth", class_map, use_ema=True)
    without, config = load_predictor(run_dir / "best_model.pth", class_map, use_ema=False)
    name = next(k for k, v in checkpoint["model"].items() if v.is_floating_point())
    torch.testing.assert_close(with_ema.state_dict()[name], checkpoint["ema"][name])
    torch.testing.assert_close(without.state_dict()[name], checkpoint["model"][name])
    assert config["name"] == "custom_detector"
    with pytest.raises(ValueError, match="trained on classes"):
        load_predictor(run_dir / "best_model.pth", ClassMap(["a", "b", "c"]))


def evaluate_in_process(*overrides: str):
    """The eval command's code path without a new interpreter: exit code and messages, via capsys."""
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose(config_name="eval", overrides=list(overrides))
    try:
        run_command(evaluate_run, cfg)
    except SystemExit as stop:
        return stop.code
    return 0


def test_bad_input_is_one_clear_error(run_dir, sample_dataset_dir, tmp_path, capsys):
    assert evaluate_in_process(f"dataset_dir={sample_dataset_dir}", f"run_dir={tmp_path}") == 2
    assert f"{tmp_path} is not a training run directory" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image_path": "missing.png", "bounding_box_annotations": []}\n')
    assert evaluate_in_process(f"dataset_dir={sample_dataset_dir}", f"run_dir={run_dir}", f"split={bad}") == 2
    err = capsys.readouterr().err
    assert f"{bad}:1" in err and "image_path" in err
    assert evaluate_in_process(f"dataset_dir={sample_dataset_dir}", f"run_dir={run_dir}", "split=nope") == 2
    assert "split='nope'" in capsys.readouterr().err
    assert evaluate_in_process(f"dataset_dir={sample_dataset_dir}", f"run_dir={run_dir}",
                               f"checkpoint_path={run_dir / 'model.bin'}") == 2
    assert "unknown format '.bin'" in capsys.readouterr().err


def test_cli_reports_bad_input_without_traceback(sample_dataset_dir, tmp_path):
    result = run_cli("evaluate", f"dataset_dir={sample_dataset_dir}", f"run_dir={tmp_path}")
    assert result.returncode == 2
    assert "is not a training run directory" in result.stderr and "Traceback" not in result.stderr


ONNX_TOLERANCE = 1e-3  # absolute, on every COCO stat: onnxruntime and PyTorch differ by float rounding only


def test_onnx_checkpoint_gives_the_pytorch_metrics(single_process, run_dir, sample_dataset_dir, odd_split, tmp_path):
    from trainer.deploy.onnx_export import export_onnx
    from trainer.data.images import read_image

    _, out = single_process
    model, config = load_predictor(run_dir / "best_model.pth", ClassMap(CLASSES))
    example = read_image(json.loads((out / "ground_truth_coco.json").read_text())["images"][0]["file_name"])
    onnx_path = export_onnx(model, run_dir / "model.onnx", example, max_detections=config["detections_per_img"],
                            metadata={"class_names": json.dumps(CLASSES), "model_config": json.dumps(config)})
    assert evaluate_in_process(f"dataset_dir={sample_dataset_dir}", f"run_dir={run_dir}", f"split={odd_split}",
                               f"checkpoint_path={onnx_path}", "num_workers=0", "batch_size=2",
                               "num_visualizations=1") == 0
    onnx_out = run_dir / f"eval_{sample_dataset_dir.name}_odd_model_onnx"
    onnx_metrics = json.loads((onnx_out / "custom_detector_metrics.json").read_text())
    torch_metrics = json.loads((out / "custom_detector_metrics.json").read_text())
    assert onnx_metrics["checkpoint"]["format"] == "onnx"
    assert onnx_metrics["num_predictions"] == torch_metrics["num_predictions"]
    # Same detections image by image (scores sorted: near-ties may swap places).
    onnx_predictions = json.loads((onnx_out / "custom_detector_predictions.json").read_text())
    torch_predictions = json.loads((out / "custom_detector_predictions.json").read_text())
    for image_id in range(NUM_IMAGES):
        scores = [sorted(p["score"] for p in predictions if p["image_id"] == image_id)
                  for predictions in (onnx_predictions, torch_predictions)]
        assert scores[0] == pytest.approx(scores[1], abs=1e-4)
    for name, value in torch_metrics["stats"].items():
        if value is None:
            assert onnx_metrics["stats"][name] is None
        else:
            assert onnx_metrics["stats"][name] == pytest.approx(value, abs=ONNX_TOLERANCE), name


def test_val_split_is_the_runs_held_out_images(sample_dataset_dir, tmp_path, capsys):
    """Without val.jsonl, split=val evaluates the images the run held out of dataset.jsonl (val_split + seed)."""
    from trainer.data.builder import load_split, split_off_validation

    dataset_dir = tmp_path / "only_all"
    dataset_dir.mkdir()
    rows = [json.loads(line) for line in (sample_dataset_dir / "dataset.jsonl").read_text().splitlines()]
    for row in rows:
        row["image_path"] = str(sample_dataset_dir / row["image_path"])
    (dataset_dir / "dataset.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    run_dir = make_run_dir(tmp_path / "run", seed=5, dataset_config={"dataset_dir": str(dataset_dir), "val_split": 0.2})
    assert evaluate_in_process(f"dataset_dir={dataset_dir}", f"run_dir={run_dir}", "num_workers=0",
                               "num_visualizations=0") == 0
    metrics = json.loads((run_dir / "eval_only_all_val_best_model_pytorch" / "custom_detector_metrics.json").read_text())
    _, held_out = split_off_validation(load_split(dataset_dir / "dataset.jsonl")[0], 0.2, seed=5)
    gt = json.loads((run_dir / "eval_only_all_val_best_model_pytorch" / "ground_truth_coco.json").read_text())
    assert [image["file_name"] for image in gt["images"]] == [str(r.image_path.resolve()) for r in held_out]
    assert metrics["dataset"]["held_out"] == {"val_split": 0.2, "seed": 5}
    # A run trained on other files has no held-out images here: a clear error, not a guess.
    other = make_run_dir(tmp_path / "other", dataset_config={"train_jsonl": "/elsewhere/train.jsonl"})
    assert evaluate_in_process(f"dataset_dir={dataset_dir}", f"run_dir={other}") == 2
    assert "did not hold out its validation images" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_on_a_run_from_the_training_engine(sample_dataset_dir, tmp_path):
    from train_runs import assert_ok as training_ok
    from train_runs import run_training, train_command

    run_dir = tmp_path / "trained"
    training_ok(run_training(train_command(sample_dataset_dir, run_dir, "training.num_epochs=1", "logger=none")))
    result = run_cli("evaluate", f"dataset_dir={sample_dataset_dir}", f"run_dir={run_dir}", "num_workers=0",
                     "num_visualizations=2")
    assert_ok(result)
    out = run_dir / f"eval_{sample_dataset_dir.name}_val_best_model_pytorch"
    assert {p.name for p in out.iterdir()} >= {"ground_truth_coco.json", "precision_recall.png", "confusion_matrix.png",
                                               "visualizations"}
    metrics = json.loads((out / "custom_detector_metrics.json").read_text())
    assert metrics["checkpoint"]["use_ema"] is True and metrics["dataset"]["num_images"] == 6
    assert len(json.loads((out / "custom_detector_predictions.json").read_text())) == metrics["num_predictions"]
    assert len(list((out / "visualizations").iterdir())) == 2
