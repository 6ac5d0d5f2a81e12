"""Suite 4, inference: latency per image of the exported ONNX model (onnxruntime, fp32 and static int8) vs the
PyTorch model in eval mode, for each exportable model, with the export code of ``trainer/export.py``."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.common import BCCD_DIR, compose_train_config, interleaved, median, paired_ratio, sample_data
from trainer.data.images import read_image
from trainer.data.records import load_records
from trainer.deploy.convert import export_files, pytorch_predict
from trainer.deploy.onnx_runtime import OnnxPredictor
from trainer.models import build_model


@dataclass
class InferenceSettings:
    repeats: int = 10           # at least this many timed single-image calls per side (interleaved) ...
    min_seconds: float = 20.0   # ... and more, up to 40, until this much time has passed (per model)
    calibration_images: int = 8
    max_detections: int = 100
    opset: int = 17


def latency_images(work_dir: Path, count: int) -> tuple[list[torch.Tensor], str]:
    root = BCCD_DIR if (BCCD_DIR / "val.jsonl").is_file() else sample_data(work_dir / "infer_data", count, (640, 480))
    records, _ = load_records(root / ("val.jsonl" if root == BCCD_DIR else "dataset.jsonl"))
    images = [read_image(record.image_path) for record in records[:count]]
    h, w = images[0].shape[-2:]
    return images, f"{'bccd val' if root == BCCD_DIR else 'synthetic'} {w}x{h}"


def measure_model(model_name: str, images: list[torch.Tensor], settings: InferenceSettings) -> dict:
    torch.manual_seed(0)
    model_cfg = compose_train_config([f"model={model_name}"]).model
    model = build_model(model_cfg, num_classes=3).eval()
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path, int8_path, int8_error = export_files(
            model, Path(tmp), images[0], {"class_names": '["a", "b", "c"]'}, settings.max_detections, settings.opset,
            images[: settings.calibration_images])
        fp32 = OnnxPredictor(fp32_path, threads=threads)
        int8 = OnnxPredictor(int8_path, threads=threads) if int8_path else None
        image = images[-1]  # not a calibration image
        batch = image[None].numpy()
        calls = {"pytorch": lambda: pytorch_predict(model, [image]), "ort_fp32": lambda: fp32.run(batch)}
        if int8 is not None:
            calls["ort_int8"] = lambda: int8.run(batch)
        times = interleaved(calls, repeats=settings.repeats, min_seconds=settings.min_seconds)
    ms = {name: 1000 * median(values) for name, values in times.items()}
    return {"model": model_name, "latency_ms": ms, "ort_vs_pytorch": paired_ratio(times["ort_fp32"], times["pytorch"]),
            "int8_vs_fp32": paired_ratio(times["ort_int8"], times["ort_fp32"]) if "ort_int8" in ms else None,
            "int8_error": int8_error, "threads": threads}


def run(models: list[str], work_dir: Path, settings: InferenceSettings) -> dict:
    images, description = latency_images(work_dir, settings.calibration_images + 1)
    return {"images": description, "weights": "random (untrained; same weights on every side)",
            "rows": [measure_model(name, images, settings) for name in models]}


def to_markdown(result: dict) -> str:
    lines = [f"One {result['images']} image per call, batch 1, weights {result['weights']}. Latencies are medians; "
             "ratios are medians of per-round ratios.", "",
             "| model | PyTorch eager ms | ORT fp32 ms | ORT int8 ms | ORT / PyTorch | target <= 0.8 | int8 / fp32 |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        ms = r["latency_ms"]
        int8 = f"{ms['ort_int8']:.1f}" if "ort_int8" in ms else f"failed: {r['int8_error']}"
        ratio8 = f"{r['int8_vs_fp32']:.2f}x" if r["int8_vs_fp32"] is not None else "-"
        lines.append(f"| {r['model']} | {ms['pytorch']:.1f} | {ms['ort_fp32']:.1f} | {int8} | "
                     f"{r['ort_vs_pytorch']:.2f}x | {'yes' if r['ort_vs_pytorch'] <= 0.8 else 'no'} | {ratio8} |")
    return "\n".join(lines)
