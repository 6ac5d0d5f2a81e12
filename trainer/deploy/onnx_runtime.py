"""Run an exported detector with onnxruntime behind the same call as a PyTorch model in eval mode."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from trainer.data.classes import ClassMap
from trainer.deploy.onnx_export import INPUT_NAME, OUTPUT_NAMES


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """float [3, H, W] in 0..1 -> uint8. Rounds (truncation would turn 0.99999 * 255 into 254): dataset images
    are ``uint8 * (1/255)``, so rounding recovers their exact pixel values."""
    if image.dtype == torch.uint8:
        return image.cpu()
    return (image.detach().float().cpu() * 255).round_().clamp_(0, 255).to(torch.uint8)


def unpad(location: np.ndarray, score: np.ndarray, category: np.ndarray) -> dict[str, torch.Tensor]:
    """One image's padded outputs -> ``{"boxes", "scores", "labels"}`` without the padding rows (category 0)."""
    keep = category > 0
    return {"boxes": torch.from_numpy(location[keep].reshape(-1, 4)), "scores": torch.from_numpy(score[keep]),
            "labels": torch.from_numpy(category[keep].astype(np.int64))}


class OnnxPredictor:
    """``predictor(list of float [3, H, W] images in 0..1) -> list of {"boxes", "scores", "labels"}``.

    Interchangeable with a detector in eval mode for evaluation and prediction. ``class_map`` and the rest of the
    export metadata come from the model file.
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model {str(self.path)!r} does not exist")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        # Idle pool threads would otherwise spin for a while after each run, taking the cores from whatever runs
        # next on them (data loading, PyTorch in a side-by-side comparison).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), options,
                                            providers=list(providers or ["CPUExecutionProvider"]))
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [INPUT_NAME] or outputs != list(OUTPUT_NAMES):
            raise ValueError(f"{str(self.path)!r} is not an exported detector: expected {INPUT_NAME} -> "
                             f"{list(OUTPUT_NAMES)}, found {inputs} -> {outputs}")
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        names = self.metadata.get("class_names")
        self.class_map = ClassMap(json.loads(names)) if names else None

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw graph call: uint8 [B, 3, H, W] -> padded (location, score, category)."""
        return tuple(self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(batch)}))

    def predict_batch(self, batch: np.ndarray) -> list[dict[str, torch.Tensor]]:
        location, score, category = self.run(batch)
        return [unpad(location[i], score[i], category[i]) for i in range(batch.shape[0])]

    def __call__(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        pixels = [to_uint8(image).numpy() for image in images]
        if len({p.shape for p in pixels}) == 1:
            return self.predict_batch(np.stack(pixels))
        # The graph's batch shares one H x W; images of different sizes go one by one.
        return [self.predict_batch(p[None])[0] for p in pixels]
