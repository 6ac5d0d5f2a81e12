"""Deployment: ONNX export with the batch/padding contract, onnxruntime prediction, parity checks, int8."""
from trainer.deploy.onnx_export import INPUT_NAME, OUTPUT_NAMES, export_onnx
from trainer.deploy.onnx_runtime import OnnxPredictor

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "OnnxPredictor", "export_onnx"]
