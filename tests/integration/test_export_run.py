"""The export command end to end: a run trained by ``trainer/train.py`` -> ``launch/convert_model.sh`` ->
``RUN/onnx_model/``, evaluated with ``trainer/evaluate.py`` against the PyTorch checkpoint."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml

from eval_runs import make_run_dir, run_cli
from train_runs import REPO, assert_ok, run_training, train_command
from trainer.data.images import read_image
from trainer.deploy.convert import convert_run
from trainer.deploy.onnx_runtime import OnnxPredictor
from trainer.deploy.wrapper import PIXEL_SCALE
from trainer.models import load_trained_model

pytestmark = pytest.mark.slow
CONVERT = REPO / "launch" / "convert_model.sh"


def export_config(**overrides) -> dict:
    """configs/export.yaml as the entry point resolves it, without Hydra's own sections."""
    config = yaml.safe_load((REPO / "configs" / "export.yaml").read_text())
    for hydra_key in ("defaults", "hydra"):
        config.pop(hydra_key)
    return {**config, **overrides}


@pytest.fixture(scope="module")
def trained_run(sample_dataset_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("export") / "run"
    assert_ok(run_training(train_command(sample_dataset_dir, run_dir, "training.num_epochs=3", "logger=none")))
    return run_dir


@pytest.fixture(scope="module")
def exported(trained_run) -> Path:
    result = subprocess.run(["bash", str(CONVERT), str(trained_run), "quantize=true", "calibration_images=8",
                             "latency_repeats=3"], cwd=REPO, capture_output=True, text=True, timeout=400,
                            env={**os.environ, "PY": sys.executable, "OMP_NUM_THREADS": "1"})
    assert_ok(result)
    return trained_run / "onnx_model"


def test_export_writes_every_file(exported, trained_run):
    for name in ("model.onnx", "model_int8.onnx", "labels.txt", "conversion_summary.txt"):
        assert (exported / name).is_file(), name
    assert len(list((exported / "test_results").glob("*.png"))) == 5
    classes = json.loads((trained_run / "classes.json").read_text())["names"]
    assert (exported / "labels.txt").read_text().splitlines() == ["__background__", *classes]
    for name in ("model.onnx", "model_int8.onnx"):
        onnx.checker.check_model(str(exported / name), full_check=True)
    metadata = {p.key: p.value for p in onnx.load(str(exported / "model.onnx")).metadata_props}
    assert json.loads(metadata["class_names"]) == classes
    assert metadata["weights"] == "ema"  # the engine's checkpoints carry EMA weights
    assert json.loads(metadata["input_spec"])["dtype"] == "uint8"


def test_summary_reports_measured_parity_latency_and_int8(exported):
    summary = (exported / "conversion_summary.txt").read_text()
    for batch_size in (1, 2):
        line = re.search(rf"batch {batch_size}: .*category agreement ([\d.]+)\), max \|box diff\| ([\d.e+-]+) px, "
                         rf"max \|score diff\| ([\d.e+-]+)", summary)
        assert line, summary
        agreement, box, score = map(float, line.groups())
        assert agreement == 1.0 and box <= 0.05 and score <= 1e-4
    assert "within tolerance" in summary
    assert re.search(r"ONNX Runtime +[\d.]+ ms", summary) and re.search(r"ONNX int8 +[\d.]+ ms", summary)
    sizes = dict(re.findall(r"(model(?:_int8)?\.onnx) +([\d.]+) MB", summary))
    assert float(sizes["model_int8.onnx"]) < float(sizes["model.onnx"])
    assert re.search(r"mAP change int8 - fp32: AP [+-][\d.]+", summary)


def test_evaluate_gives_the_same_map_for_onnx_and_pytorch(exported, trained_run, sample_dataset_dir, tmp_path):
    stats = {}
    for checkpoint in (trained_run / "best_model.pth", exported / "model.onnx"):
        out_dir = tmp_path / checkpoint.suffix[1:]
        assert_ok(run_cli("evaluate", f"dataset_dir={sample_dataset_dir}", f"run_dir={trained_run}",
                          f"checkpoint_path={checkpoint}", f"output_dir={out_dir}", "num_workers=0"))
        (metrics_file,) = out_dir.glob("*_metrics.json")
        stats[checkpoint.suffix] = json.loads(metrics_file.read_text())["stats"]
    assert stats[".pth"]["AP50"] > 0, "the trained model should find something, or the comparison is vacuous"
    for key in ("AP", "AP50", "AP75"):
        assert stats[".onnx"][key] == pytest.approx(stats[".pth"][key], abs=0.005)


def test_export_uses_the_ema_weights(sample_dataset_dir, tmp_path):
    # This checkpoint's EMA weights are its raw weights plus noise, so the two predict differently.
    run_dir = make_run_dir(tmp_path / "run", with_ema=True)
    out_dir = convert_run(export_config(run_dir=str(run_dir), evaluate=False, latency_repeats=1, num_test_images=1,
                                        dataset={"dataset_dir": str(sample_dataset_dir)}))
    image = read_image(next((sample_dataset_dir / "data").iterdir()))
    (onnx_output,) = OnnxPredictor(out_dir / "model.onnx")([image.float().mul(PIXEL_SCALE)])
    for use_ema, should_match in ((True, True), (False, False)):
        model, _, _ = load_trained_model(run_dir / "best_model.pth", use_ema=use_ema)
        with torch.no_grad():
            (reference,) = model([image.float().mul(PIXEL_SCALE)])
        n = len(onnx_output["scores"])
        matches = (torch.equal(reference["labels"][:n], onnx_output["labels"])
                   and np.allclose(reference["scores"][:n], onnx_output["scores"], atol=1e-5))
        assert matches == should_match


def test_parity_outside_tolerance_fails_after_writing_the_summary(sample_dataset_dir, tmp_path):
    run_dir = make_run_dir(tmp_path / "run")
    with pytest.raises(RuntimeError, match="beyond the tolerances"):
        convert_run(export_config(run_dir=str(run_dir), evaluate=False, latency_repeats=1, num_test_images=1,
                                  score_tolerance=-1.0, dataset={"dataset_dir": str(sample_dataset_dir)}))
    assert "OUTSIDE TOLERANCE" in (run_dir / "onnx_model" / "conversion_summary.txt").read_text()


def test_convert_script_needs_a_run_dir():
    result = subprocess.run(["bash", str(CONVERT)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "usage" in result.stderr
