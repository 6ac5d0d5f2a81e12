"""Distributed trainer for object detectors (JSONL boxes -> Accelerate training -> COCO eval -> ONNX)."""

__version__ = "0.1.0"
