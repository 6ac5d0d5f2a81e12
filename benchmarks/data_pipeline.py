"""Suite 2, data pipeline: images/s the engine's training loader delivers (decode + augment + collate) with 0, 1
and 2 workers, next to what the model consumes; and JPEG/PNG decode speed of torchvision.io vs PIL."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image

from benchmarks.common import BCCD_DIR, interleaved, median, sample_data, timed
from benchmarks.training import BareLoop, Settings, engine_trainer
from trainer.data.builder import build_datasets
from trainer.data.dataset import DetectionDataset
from trainer.engine.data import build_train_loader


@dataclass
class DataSettings:
    num_images: int = 48
    batch_size: int = 4
    workers: tuple[int, ...] = (0, 1, 2)
    decode_images: int = 60
    repeats: int = 3
    consumer_model: str = "custom_detector"  # the fastest model: the strictest test of "not the bottleneck"
    consumer_image_size: tuple[int, int] = (320, 240)


def image_source(work_dir: Path, settings: DataSettings) -> tuple[Path, str]:
    """BCCD (real 640x480 JPEGs) when it is next to the repo, else the synthetic sample data."""
    if (BCCD_DIR / "train.jsonl").is_file():
        return BCCD_DIR, "bccd train split (640x480 JPEG)"
    return sample_data(work_dir / "loader_data", settings.num_images, (640, 480)), "synthetic sample (640x480)"


def loader_images_per_s(dataset, batch_size: int, workers: int, repeats: int) -> float:
    loader, sampler, steps = build_train_loader(dataset, batch_size=batch_size, accumulation_steps=1, seed=0,
                                                num_replicas=1, rank=0, num_workers=workers, group_factor=3)

    def epoch():
        sampler.set_epoch(0)
        for _ in loader:
            pass

    seconds = median([timed(epoch) for _ in range(repeats)])  # worker start-up included, as in training
    return steps * batch_size / seconds


def decode_rates(paths: list[Path], repeats: int) -> dict[str, float]:
    blobs = [path.read_bytes() for path in paths]

    def torchvision_io():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for blob in blobs:
                decode_image(torch.frombuffer(bytearray(blob), dtype=torch.uint8), mode=ImageReadMode.RGB)

    def pil():
        import io

        for blob in blobs:
            with Image.open(io.BytesIO(blob)) as image:
                torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)

    times = interleaved({"torchvision.io": torchvision_io, "PIL": pil}, repeats=repeats)
    return {name: len(blobs) / median(values) for name, values in times.items()}


def consumption_images_per_s(work_dir: Path, settings: DataSettings) -> float:
    """Training images/s of the fastest model (bare loop, data already in memory: only the model's cost)."""
    import tempfile

    train_settings = Settings(steps=2, batch_size=settings.batch_size, image_size=settings.consumer_image_size)
    data_dir = sample_data(work_dir / "consumer_data", train_settings.steps * settings.batch_size,
                           settings.consumer_image_size)
    with tempfile.TemporaryDirectory() as run_dir:
        bare = BareLoop(engine_trainer(settings.consumer_model, data_dir, Path(run_dir), train_settings))
    bare.loader = list(bare.loader)  # pre-loaded batches: time only forward/backward/step
    bare.round()  # warm-up
    seconds = median([timed(bare.round) for _ in range(settings.repeats)])
    return bare.steps * settings.batch_size / seconds


def run(work_dir: Path, settings: DataSettings) -> dict:
    root, source = image_source(work_dir, settings)
    bundle = build_datasets({"train_jsonl": str(root / "train.jsonl"), "val_split": 0, "augmentation": "default"})
    dataset = DetectionDataset(bundle.train.records[: settings.num_images], bundle.class_map, bundle.train.transforms)
    loader_rates = {workers: loader_images_per_s(dataset, settings.batch_size, workers, settings.repeats)
                    for workers in settings.workers}
    consumption = consumption_images_per_s(work_dir, settings)
    paths = [record.image_path for record in bundle.train.records[: settings.decode_images]]
    return {"source": source, "images": len(dataset), "batch_size": settings.batch_size,
            "augmentation": "default (photometric, zoom out, IoU crop, flip)",
            "loader_img_s": {str(k): v for k, v in loader_rates.items()},
            "model_consumption_img_s": consumption, "consumer_model": settings.consumer_model,
            "decode_img_s": decode_rates(paths, settings.repeats), "decode_images": len(paths)}


def to_markdown(result: dict) -> str:
    consumption = result["model_consumption_img_s"]
    lines = [f"Training loader on {result['images']} images of the {result['source']}, batch "
             f"{result['batch_size']}, augmentation {result['augmentation']}; model consumption = "
             f"{result['consumer_model']} training steps on pre-loaded batches ({consumption:.2f} img/s).", "",
             "| workers | loader img/s | loader / model consumption |", "|---|---|---|"]
    for workers, rate in result["loader_img_s"].items():
        lines.append(f"| {workers} | {rate:.1f} | {rate / consumption:.1f}x |")
    decode = result["decode_img_s"]
    lines += ["", f"| decoder ({result['decode_images']} images) | img/s | vs PIL |", "|---|---|---|"]
    for name, rate in decode.items():
        lines.append(f"| {name} | {rate:.1f} | {rate / decode['PIL']:.2f}x |")
    return "\n".join(lines)
