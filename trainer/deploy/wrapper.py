"""The module that is traced for ONNX: uint8 pixels in, fixed-size padded detections out."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# uint8 -> float exactly as the dataset's ``ToDtype(float32, scale=True)`` does it (multiply by the
# float32 reciprocal, not divide), so the exported graph sees bit-identical inputs to the trained model.
PIXEL_SCALE = 1.0 / 255


class SingleImageExport(nn.Module):
    """``image`` uint8 [1, 3, H, W] RGB -> ``location`` [1, N, 4], ``score`` [1, N], ``category`` int64 [1, N].

    N is ``max_detections``; rows past the model's detections hold score 0 and category 0. The detector keeps its
    own resize and normalisation, so the traced graph carries the whole preprocessing. One image per trace:
    torchvision detectors loop over images in Python, which tracing would unroll into a fixed batch size, so
    ``onnx_export.batch_over_images`` adds the batch dimension around this graph with an ONNX Loop.
    """

    def __init__(self, detector: nn.Module, max_detections: int):
        super().__init__()
        if max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}")
        self.detector = detector
        self.max_detections = int(max_detections)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        scaled = image.to(torch.float32).mul(PIXEL_SCALE)
        (detections,) = self.detector([scaled[0]])
        return pad_detections(detections, self.max_detections)


def pad_detections(detections: dict[str, Tensor], max_detections: int) -> tuple[Tensor, Tensor, Tensor]:
    """The first ``max_detections`` rows (detectors sort by score), zero-padded, each with a leading batch dim."""
    boxes = detections["boxes"][:max_detections]
    scores = detections["scores"][:max_detections]
    labels = detections["labels"][:max_detections].to(torch.int64)
    # Computed from the traced shape, so the padding follows the number of detections at run time.
    missing = max_detections - scores.shape[0]
    return (F.pad(boxes, (0, 0, 0, missing))[None], F.pad(scores, (0, missing))[None],
            F.pad(labels, (0, missing))[None])
