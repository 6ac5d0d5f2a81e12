"""Numeric agreement and speed of an exported model against the PyTorch model it came from."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trainer.deploy.onnx_runtime import OnnxPredictor
from trainer.deploy.wrapper import PIXEL_SCALE

Detections = Mapping[str, "torch.Tensor | np.ndarray"]


@dataclass
class ParityReport:
    """Detections matched one-to-one (same category, closest box); differences are over matched pairs.

    ``category_agreement`` = matched pairs / max(reference, candidate) detections, so an extra, missing or
    relabelled detection lowers it.
    """

    num_images: int = 0
    reference_detections: int = 0
    candidate_detections: int = 0
    matched: int = 0
    max_box_diff_px: float = 0.0
    max_score_diff: float = 0.0

    @property
    def category_agreement(self) -> float:
        total = max(self.reference_detections, self.candidate_detections)
        return 1.0 if total == 0 else self.matched / total

    def add(self, other: "ParityReport") -> None:
        self.num_images += other.num_images
        self.reference_detections += other.reference_detections
        self.candidate_detections += other.candidate_detections
        self.matched += other.matched
        self.max_box_diff_px = max(self.max_box_diff_px, other.max_box_diff_px)
        self.max_score_diff = max(self.max_score_diff, other.max_score_diff)

    def passes(self, box_tolerance_px: float, score_tolerance: float) -> bool:
        return (self.category_agreement == 1.0 and self.max_box_diff_px <= box_tolerance_px
                and self.max_score_diff <= score_tolerance)

    def describe(self, reference: str = "PyTorch", candidate: str = "ONNX") -> str:
        return (f"{self.num_images} images, {self.reference_detections} {reference} / {self.candidate_detections} "
                f"{candidate} "
                f"detections, {self.matched} matched (category agreement {self.category_agreement:.4f}), "
                f"max |box diff| {self.max_box_diff_px:.3g} px, max |score diff| {self.max_score_diff:.3g}")


def _array(value) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def compare_image(reference: Detections, candidate: Detections) -> ParityReport:
    """Greedy one-to-one matching of same-category detections by smallest max-abs box difference.

    Matching rather than comparing row i with row i: detections with (near-)equal scores may legitimately come out
    in another order after float rounding differences.
    """
    ref_boxes, cand_boxes = _array(reference["boxes"]).reshape(-1, 4), _array(candidate["boxes"]).reshape(-1, 4)
    ref_scores, cand_scores = _array(reference["scores"]).reshape(-1), _array(candidate["scores"]).reshape(-1)
    ref_labels, cand_labels = _array(reference["labels"]).reshape(-1), _array(candidate["labels"]).reshape(-1)
    report = ParityReport(num_images=1, reference_detections=len(ref_labels), candidate_detections=len(cand_labels))
    if len(ref_labels) == 0 or len(cand_labels) == 0:
        return report
    box_diff = np.abs(ref_boxes[:, None, :].astype(np.float64) - cand_boxes[None, :, :]).max(axis=2)
    score_diff = np.abs(ref_scores[:, None].astype(np.float64) - cand_scores[None, :])
    cost = np.where(ref_labels[:, None] == cand_labels[None, :], box_diff + score_diff, np.inf)
    used_ref, used_cand = set(), set()
    for flat in np.argsort(cost, axis=None, kind="stable"):
        i, j = np.unravel_index(flat, cost.shape)
        if not np.isfinite(cost[i, j]):
            break
        if i in used_ref or j in used_cand:
            continue
        used_ref.add(i)
        used_cand.add(j)
        report.matched += 1
        report.max_box_diff_px = max(report.max_box_diff_px, float(box_diff[i, j]))
        report.max_score_diff = max(report.max_score_diff, float(score_diff[i, j]))
    return report


def compare_predictions(reference: Sequence[Detections], candidate: Sequence[Detections]) -> ParityReport:
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference vs {len(candidate)} candidate predictions")
    total = ParityReport()
    for ref, cand in zip(reference, candidate):
        total.add(compare_image(ref, cand))
    return total


def pytorch_predict(model: nn.Module, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """uint8 images through the PyTorch model, scaled exactly as the exported graph scales them."""
    with torch.no_grad():
        return model([image.to(torch.float32).mul(PIXEL_SCALE) for image in images])


def crop_to_common_size(images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """A batch tensor shares one H x W: crop every image to the smallest height and width among them."""
    height = min(image.shape[-2] for image in images)
    width = min(image.shape[-1] for image in images)
    return [image[:, :height, :width] for image in images]


def measure_parity(model: nn.Module, predictor: OnnxPredictor, images: Sequence[torch.Tensor],
                   batch_size: int, max_detections: int) -> ParityReport:
    """ONNX Runtime vs PyTorch on ``images`` in batches of ``batch_size`` (each batch cropped to one size).

    PyTorch's detections are cut to the graph's ``max_detections`` rows (both are sorted by score)."""
    reference, candidate = [], []
    for start in range(0, len(images) - batch_size + 1, batch_size):
        batch = crop_to_common_size(images[start:start + batch_size])
        reference += [{key: value[:max_detections] for key, value in detections.items()}
                      for detections in pytorch_predict(model, batch)]
        candidate += predictor.predict_batch(torch.stack(batch).numpy())
    return compare_predictions(reference, candidate)


def median_latency_ms(call: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``call()`` in milliseconds after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)
