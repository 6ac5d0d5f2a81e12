"""The export command: a trained run -> ``RUN/onnx_model/`` with the ONNX model checked against PyTorch.

Writes ``model.onnx`` (and ``model_int8.onnx`` with ``quantize=true``), ``labels.txt``, ``conversion_summary.txt``
(every number in it measured in this run) and ``test_results/`` (the first training images with the ONNX
model's detections drawn on them).
"""
from __future__ import annotations

import json
import logging
import platform
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch
import torchvision
from torch import nn

from trainer.data.builder import build_datasets
from trainer.data.classes import BACKGROUND_ID, ClassMap
from trainer.data.dataset import DetectionDataset
from trainer.data.images import read_image
from trainer.data.transforms import build_transforms
from trainer.deploy.onnx_export import INPUT_NAME, finish_model, trace_single_image_graph
from trainer.deploy.onnx_runtime import OnnxPredictor
from trainer.deploy.parity import compare_predictions, measure_parity, median_latency_ms, pytorch_predict
from trainer.deploy.quantize import QUANTIZED_OPS, quantize_single_image_graph
from trainer.deploy.summary import ModelMeasurement, format_summary
from trainer.deploy.wrapper import PIXEL_SCALE
from trainer.evaluation.coco import build_coco_ground_truth, to_coco_results
from trainer.evaluation.distributed import to_numpy_prediction
from trainer.evaluation.metrics import compute_metrics
from trainer.evaluation.visualize import draw_predictions, record_ground_truth, save_image, unique_output_names
from trainer.models import load_trained_model

log = logging.getLogger(__name__)
BACKGROUND_LABEL = "__background__"


def write_labels(class_map: ClassMap, path: Path) -> Path:
    """Line i (0-based) is the name of class id i: line 0 is ``__background__`` (id 0, also the padding
    category), then the K classes, so ``labels[category]`` names any output category."""
    lines = {BACKGROUND_ID: BACKGROUND_LABEL, **{class_map.id_of(name): name for name in class_map.names}}
    path.write_text("".join(f"{lines[i]}\n" for i in range(len(lines))), encoding="utf-8")
    return path


def checkpoint_info(path: Path) -> dict[str, Any]:
    """Training progress recorded in the checkpoint, and whether it holds EMA weights (mmap: no full read)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {"has_ema": checkpoint.get("ema") is not None,
            **{key: checkpoint.get(key) for key in ("epoch", "global_step", "metrics")}}


def coco_stats(predictor, dataset: DetectionDataset) -> dict[str, float | None]:
    """COCO stats of ``predictor`` on ``dataset``, one image at a time (no batch padding differences)."""
    predictions = {}
    with torch.no_grad():
        for index in range(len(dataset)):
            image, _ = dataset[index]  # evaluation transforms never resize: boxes stay in the file's pixels
            predictions[index] = to_numpy_prediction(predictor([image])[0])
    gt = build_coco_ground_truth(dataset.records, dataset.class_map)
    return compute_metrics(gt, to_coco_results(predictions), dataset.class_map)["stats"]


def draw_test_results(predictor: OnnxPredictor, dataset: DetectionDataset, count: int, out_dir: Path,
                      score_threshold: float) -> list[Path]:
    """The first ``count`` images of ``dataset`` with ground truth (green) and ONNX detections (red)."""
    records = dataset.records[:count]
    names = unique_output_names([record.image_path for record in records])
    written = []
    for record, name in zip(records, names):
        image = read_image(record.image_path)
        (prediction,) = predictor([image.to(torch.float32).mul(PIXEL_SCALE)])
        drawn = draw_predictions(image, to_numpy_prediction(prediction), dataset.class_map, score_threshold,
                                 record_ground_truth(record, image.shape[-1], image.shape[-2]))
        written.append(save_image(drawn, out_dir / name))
    return written


def model_metadata(class_map: ClassMap, model: nn.Module, model_config: Mapping, checkpoint: Path, weights: str,
                   max_detections: int, opset: int) -> dict[str, str]:
    """Stored in the ONNX file's metadata_props so the file describes itself without the run directory."""
    fixed = getattr(model, "fixed_input_size", None)
    return {
        "class_names": json.dumps(list(class_map.names)),
        "category_ids": "1..K in class_names order; 0 = padding/background",
        "input_spec": json.dumps({
            "name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", 3, "height", "width"], "channels": "RGB",
            "range": [0, 255], "preprocessing": "in the graph (scale to 0..1, resize, normalise)",
            "internal_size": list(fixed) if fixed else
            {"min_size": model_config.get("min_size"), "max_size": model_config.get("max_size")}}),
        "output_spec": json.dumps({
            "location": ["float32", ["batch", max_detections, 4], "x1, y1, x2, y2 in input pixels"],
            "score": ["float32", ["batch", max_detections], "0 for padding"],
            "category": ["int64", ["batch", max_detections], "class id 1..K, 0 for padding"]}),
        "max_detections": str(max_detections),
        "model_name": str(model_config.get("name")),
        "model_config": json.dumps(dict(model_config), default=str),
        "source_checkpoint": str(checkpoint),
        "weights": weights,
        "opset": str(opset),
    }


def _first_images(dataset: DetectionDataset, count: int) -> list[torch.Tensor]:
    return [read_image(record.image_path) for record in dataset.records[:count]]


def export_files(model: nn.Module, out_dir: Path, example: torch.Tensor, metadata: Mapping[str, str],
                 max_detections: int, opset: int,
                 calibration_images: Sequence[torch.Tensor] | None) -> tuple[Path, Path | None, str | None]:
    """Writes model.onnx and, given calibration images, model_int8.onnx (both from one trace).

    Returns ``(fp32 path, int8 path or None, why int8 failed or None)``: a failed quantization is reported, not
    allowed to take the fp32 export down with it."""
    with tempfile.TemporaryDirectory() as tmp:
        single = trace_single_image_graph(model, Path(tmp) / "single_image.onnx", example, max_detections, opset)
        model_path = finish_model(single, out_dir / "model.onnx", max_detections, metadata)
        if calibration_images is None:
            return model_path, None, None
        try:
            quantized = quantize_single_image_graph(single, Path(tmp) / "single_image_int8.onnx", calibration_images)
            int8_path = finish_model(quantized, out_dir / "model_int8.onnx", max_detections,
                                     {**metadata, "quantization": f"static int8 QDQ ({', '.join(QUANTIZED_OPS)}), "
                                                                  f"{len(calibration_images)} calibration images"})
        except Exception as error:  # onnxruntime's quantizer raises many types; the caller reports and fails
            log.exception("int8 quantization failed")
            return model_path, None, f"{type(error).__name__}: {error}"
    return model_path, int8_path, None


def measure_int8(int8_path: Path, fp32: OnnxPredictor, parity_images: Sequence[torch.Tensor],
                 eval_dataset: DetectionDataset | None, repeats: int) -> ModelMeasurement:
    predictor = OnnxPredictor(int8_path)
    latency_input = parity_images[0][None].numpy()
    int8 = ModelMeasurement(path=int8_path, latency_ms=median_latency_ms(lambda: predictor.run(latency_input), repeats))
    inputs = [image.to(torch.float32).mul(PIXEL_SCALE) for image in parity_images]
    int8.parity_vs_fp32 = compare_predictions(fp32(inputs), predictor(inputs))
    if eval_dataset is not None:
        int8.stats = coco_stats(predictor, eval_dataset)
    return int8


def convert_run(cfg: Mapping) -> Path:
    """Runs the export for ``configs/export.yaml``; returns the output folder. Raises after writing everything
    when ONNX Runtime disagrees with PyTorch beyond the configured tolerances or quantization failed."""
    if not cfg.get("run_dir"):
        raise ValueError("run_dir=RUN is required (a training run directory with best_model.pth)")
    run_dir = Path(cfg["run_dir"])
    checkpoint = Path(cfg["checkpoint_path"]) if cfg.get("checkpoint_path") else run_dir / "best_model.pth"
    out_dir = Path(cfg["output_dir"]) if cfg.get("output_dir") else run_dir / "onnx_model"
    max_detections, opset, repeats = int(cfg["max_detections"]), int(cfg["opset"]), int(cfg["latency_repeats"])

    model, class_map, config = load_trained_model(checkpoint, use_ema=bool(cfg["use_ema"]))
    info = checkpoint_info(checkpoint)
    weights = "ema" if cfg["use_ema"] and info["has_ema"] else "model"
    model_config = dict(config.get("model") or {})
    dataset_cfg = {**(config.get("dataset") or {}), **dict(cfg.get("dataset") or {})}
    if not (dataset_cfg.get("dataset_dir") or dataset_cfg.get("train_jsonl")):
        raise ValueError(f"{checkpoint}: its training config names no training data; the export needs training "
                         "images (parity check, calibration, test_results): pass +dataset.dataset_dir=DIR")
    data = build_datasets(dataset_cfg, classes=list(class_map.names), seed=int(config.get("seed", 0)),
                          train_transforms=build_transforms("none"))
    parity_images = _first_images(data.train, int(cfg["parity_images"]))
    first = parity_images[0]
    # Trace on a crop, so that parity (at the images' own sizes) would expose a size frozen into the trace.
    example = first[:, : first.shape[-2] - first.shape[-2] // 4, : first.shape[-1] - first.shape[-1] // 4]

    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = model_metadata(class_map, model, model_config, checkpoint, weights, max_detections, opset)
    calibration = _first_images(data.train, int(cfg["calibration_images"])) if cfg["quantize"] else None
    model_path, int8_path, int8_error = export_files(model, out_dir, example, metadata, max_detections, opset,
                                                     calibration)
    write_labels(class_map, out_dir / "labels.txt")

    predictor = OnnxPredictor(model_path)
    parity = {size: measure_parity(model, predictor, parity_images, size, max_detections) for size in (1, 2)}
    latency_input = first[None].numpy()
    pytorch_ms = median_latency_ms(lambda: pytorch_predict(model, [first]), repeats)
    fp32 = ModelMeasurement(path=model_path,
                            latency_ms=median_latency_ms(lambda: predictor.run(latency_input), repeats))
    eval_dataset = _evaluation_subset(data, cfg.get("eval_images")) if cfg["evaluate"] else None
    pytorch_stats = None
    if eval_dataset is not None:
        pytorch_stats = coco_stats(model, eval_dataset)
        fp32.stats = coco_stats(predictor, eval_dataset)
    int8 = measure_int8(int8_path, predictor, parity_images, eval_dataset, repeats) if int8_path else None

    test_results = draw_test_results(predictor, data.train, int(cfg["num_test_images"]), out_dir / "test_results",
                                     float(cfg["score_threshold"]))
    tolerances = {"box_px": float(cfg["box_tolerance_px"]), "score": float(cfg["score_tolerance"])}
    passed = all(report.passes(tolerances["box_px"], tolerances["score"]) for report in parity.values())
    summary = format_summary(
        checkpoint=checkpoint, weights=weights, checkpoint_info=info, model_config=model_config,
        class_map=class_map, metadata=metadata, opset=opset, max_detections=max_detections,
        example_size=tuple(example.shape[-2:]), parity=parity,
        parity_image_sizes=[tuple(i.shape[-2:]) for i in parity_images], tolerances=tolerances, passed=passed,
        latency_size=tuple(first.shape[-2:]), pytorch_ms=pytorch_ms, fp32=fp32, int8=int8, int8_error=int8_error,
        pytorch_stats=pytorch_stats,
        eval_description=_describe_eval(data, eval_dataset) if eval_dataset is not None else "",
        test_results=test_results, versions=_versions())
    (out_dir / "conversion_summary.txt").write_text(summary, encoding="utf-8")
    log.info("\n%s", summary)
    problems = []
    if not passed:
        problems.append(f"ONNX Runtime disagrees with PyTorch beyond the tolerances (box <= {tolerances['box_px']} "
                        f"px, score <= {tolerances['score']}): "
                        + "; ".join(f"batch {size}: {report.describe()}" for size, report in parity.items()))
    if int8_error:
        problems.append(f"int8 quantization failed: {int8_error}")
    if problems:
        raise RuntimeError(". ".join(problems) + f". Files kept in {out_dir} for inspection.")
    return out_dir


def _evaluation_subset(data, limit) -> DetectionDataset:
    dataset = data.val if data.val is not None else data.train
    records = dataset.records if limit in (None, "") else dataset.records[: int(limit)]
    return DetectionDataset(records, dataset.class_map, build_transforms("none"))


def _describe_eval(data, dataset: DetectionDataset) -> str:
    split = "validation split" if data.val is not None else "training split (the run has no validation split)"
    return f"first {len(dataset)} images of the {split}"


def _versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "onnx": onnx.__version__, "onnxruntime": ort.__version__,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
