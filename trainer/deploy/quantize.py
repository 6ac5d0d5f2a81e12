"""Static int8 quantization of the single-image graph with onnxruntime, calibrated on training images."""
from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from trainer.deploy.onnx_export import INPUT_NAME

# Only convolutions (where the compute is) are quantized: box decoding, NMS and the resize arithmetic stay
# float, since int8 there would move boxes by whole pixels and change which boxes NMS keeps.
QUANTIZED_OPS = ("Conv",)


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds uint8 [3, H, W] images one by one as the graph's ``image`` input ([1, 3, H, W])."""

    def __init__(self, images: Iterable[torch.Tensor]):
        self._images: Iterator[torch.Tensor] = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._images, None)
        return None if image is None else {INPUT_NAME: image[None].numpy()}


def quantize_single_image_graph(fp32_path: str | Path, int8_path: str | Path,
                                calibration_images: Iterable[torch.Tensor]) -> Path:
    """QDQ int8: per-channel int8 weights, uint8 activations with MinMax ranges over ``calibration_images``."""
    int8_path = Path(int8_path)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Folds constants into initializers (the quantizer needs Conv biases as initializers). Symbolic shape
        # inference is skipped: it cannot follow the data-dependent shapes after NMS.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        root = logging.getLogger()
        level = root.level
        # The quantizer logs an INFO line on the root logger for every bias shared by two convolutions.
        root.setLevel(max(level, logging.WARNING))
        try:
            quantize_static(str(prepared), str(int8_path), ImageCalibrationReader(calibration_images),
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS),
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        finally:
            root.setLevel(level)
    return int8_path
