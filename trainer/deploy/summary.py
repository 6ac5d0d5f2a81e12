"""``conversion_summary.txt``: what was exported and how it measured, written only from measured values."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.data.classes import ClassMap
from trainer.deploy.parity import ParityReport

# An int8 model losing more AP than this against fp32 gets a warning line in the summary.
INT8_AP_DROP_WARNING = 0.01
SUMMARY_METRICS = ("mAP", "AP50")  # of the checkpoint's recorded validation metrics


@dataclass
class ModelMeasurement:
    """One exported file: its latency, and (when evaluated) COCO stats and agreement with the fp32 model."""

    path: Path
    latency_ms: float
    stats: Mapping[str, float | None] | None = None
    parity_vs_fp32: ParityReport | None = None

    @property
    def size_mb(self) -> float:
        return self.path.stat().st_size / 1e6


def _ap_drop(fp32: Mapping | None, int8: Mapping | None) -> float | None:
    if not fp32 or not int8 or fp32.get("AP") is None or int8.get("AP") is None:
        return None
    return fp32["AP"] - int8["AP"]


def _stat(stats: Mapping[str, float | None] | None, key: str) -> str:
    value = None if stats is None else stats.get(key)
    return "n/a" if value is None else f"{value:.4f}"


def _delta(a: Mapping | None, b: Mapping | None, key: str) -> str:
    if a is None or b is None or a.get(key) is None or b.get(key) is None:
        return "n/a"
    return f"{b[key] - a[key]:+.4f}"


def _size(hw: Sequence[int]) -> str:
    return f"{hw[1]}x{hw[0]}"


def format_summary(*, checkpoint: Path, weights: str, checkpoint_info: Mapping[str, Any], model_config: Mapping,
                   class_map: ClassMap, metadata: Mapping[str, str], opset: int, max_detections: int,
                   example_size: Sequence[int], parity: Mapping[int, ParityReport], parity_image_sizes,
                   tolerances: Mapping[str, float], passed: bool, latency_size: Sequence[int], pytorch_ms: float,
                   fp32: ModelMeasurement, int8: ModelMeasurement | None, int8_error: str | None,
                   pytorch_stats: Mapping[str, float | None] | None, eval_description: str,
                   test_results: Sequence[Path], versions: Mapping[str, str]) -> str:
    weights_text = {"ema": "EMA weights", "model": "raw model weights (" + (
        "use_ema=false)" if checkpoint_info.get("has_ema") else "the checkpoint has no EMA weights)")}[weights]
    metrics = checkpoint_info.get("metrics") or {}
    input_spec = json.loads(metadata["input_spec"])
    internal = input_spec["internal_size"]
    resize = (f"resized inside the graph to {internal[1]}x{internal[0]} (aspect ratio not kept)"
              if isinstance(internal, list) else
              f"resized inside the graph: short side {internal['min_size']}, long side <= {internal['max_size']}")
    sizes = sorted(set(parity_image_sizes))
    lines = [
        "ONNX conversion summary",
        "=======================",
        f"date:              {versions['date']}",
        f"source checkpoint: {checkpoint} ({weights_text})",
        f"trained:           epoch {checkpoint_info.get('epoch')}, global step {checkpoint_info.get('global_step')}"
        + "".join(f", validation {k} {metrics[k]:.4f}" for k in SUMMARY_METRICS if isinstance(metrics.get(k), float)),
        f"model:             {model_config.get('name')} ({class_map.num_classes} classes)",
        f"exporter:          torch.onnx TorchScript exporter (dynamo=False), opset {opset}; batch via an ONNX Loop",
        "versions:          " + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "date"),
        "",
        "Input",
        "  image     uint8   [batch, 3, height, width]  RGB 0..255; batch, height and width dynamic",
        f"            scaling to 0..1 and normalisation in the graph; {resize}",
        "Outputs",
        f"  location  float32 [batch, {max_detections}, 4]  x1, y1, x2, y2 in input-image pixels",
        f"  score     float32 [batch, {max_detections}]     descending; padding rows 0",
        f"  category  int64   [batch, {max_detections}]     class id 1..{class_map.num_classes}; padding rows 0",
        "Classes (labels.txt: line i = class id i, line 0 = __background__ = padding)",
        "  " + ", ".join(f"{class_map.id_of(n)} {n}" for n in class_map.names),
        f"Metadata keys:     {', '.join(sorted(metadata))}",
        "",
        f"Parity: ONNX Runtime vs PyTorch (traced on a {_size(example_size)} crop; compared at "
        f"{', '.join(_size(s) for s in sizes)}; detections matched by category and closest box)",
    ]
    for batch_size, report in sorted(parity.items()):
        lines.append(f"  batch {batch_size}: {report.describe()}")
    lines += [
        f"  tolerance: box <= {tolerances['box_px']:g} px, score <= {tolerances['score']:g}, every detection "
        f"matched -> {'within tolerance' if passed else 'OUTSIDE TOLERANCE'}",
        "",
        f"Latency (median, batch 1, {_size(latency_size)} image, CPU)",
        f"  PyTorch          {pytorch_ms:9.2f} ms",
        f"  ONNX Runtime     {fp32.latency_ms:9.2f} ms  ({pytorch_ms / fp32.latency_ms:.2f}x PyTorch speed)",
    ]
    if int8 is not None:
        lines.append(f"  ONNX int8        {int8.latency_ms:9.2f} ms  "
                     f"({pytorch_ms / int8.latency_ms:.2f}x PyTorch speed)")
    if pytorch_stats is None:
        lines += ["", "COCO mAP: not measured (evaluate=false)"]
    else:
        lines += ["", f"COCO mAP ({eval_description}, one image per call)"]
        rows = [("PyTorch", pytorch_stats), ("ONNX fp32", fp32.stats)] + ([("ONNX int8", int8.stats)] if int8 else [])
        for name, stats in rows:
            lines.append(f"  {name:<10} AP {_stat(stats, 'AP')}  AP50 {_stat(stats, 'AP50')}")
        lines.append(f"  ONNX fp32 - PyTorch: AP {_delta(pytorch_stats, fp32.stats, 'AP')}, "
                     f"AP50 {_delta(pytorch_stats, fp32.stats, 'AP50')}")
    lines += ["", "Files", f"  {fp32.path.name:<16} {fp32.size_mb:8.2f} MB"]
    if int8 is not None:
        lines.append(f"  {int8.path.name:<16} {int8.size_mb:8.2f} MB  ({fp32.size_mb / int8.size_mb:.2f}x smaller)")
    lines += ["  labels.txt", f"  test_results/    {len(test_results)} images: "
              + ", ".join(p.name for p in test_results)]
    if int8 is not None:
        lines += ["", "Int8 (static quantization, QDQ: per-channel int8 Conv weights, uint8 activations, MinMax "
                  "calibration on training images; box decoding and NMS stay float)",
                  f"  int8 vs fp32 ONNX on the parity images: {int8.parity_vs_fp32.describe('fp32', 'int8')}"]
        if pytorch_stats is not None:
            lines.append(f"  mAP change int8 - fp32: AP {_delta(fp32.stats, int8.stats, 'AP')}, "
                         f"AP50 {_delta(fp32.stats, int8.stats, 'AP50')}")
            drop = _ap_drop(fp32.stats, int8.stats)
            if drop is not None and drop > INT8_AP_DROP_WARNING:
                lines.append(f"  WARNING: int8 loses {drop:.4f} AP against fp32 (> {INT8_AP_DROP_WARNING}): this "
                             "model does not quantize well; deploy model.onnx where accuracy matters")
    if int8_error:
        lines += ["", f"Int8: quantization FAILED, no model_int8.onnx written: {int8_error}"]
    return "\n".join(lines) + "\n"
