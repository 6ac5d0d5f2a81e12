"""Shared pieces of the benchmark suites: configs, data, timing and the machine description."""
from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig

from trainer.data.sample import generate_sample_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
BCCD_DIR = REPO_ROOT.parent / "shared" / "datasets" / "bccd"

# Inputs small enough for a 2-core CPU; faster_rcnn_320 is the "faster_rcnn (small input)" of the issue.
SMALL_INPUT = {
    "custom_detector": ["model.min_size=256", "model.max_size=320"],
    "ssdlite": [],  # fixed 320x320
    "faster_rcnn_320": [],
}


def compose_train_config(overrides: Sequence[str]) -> DictConfig:
    """``configs/train.yaml`` with Hydra ``key=value`` overrides, as ``trainer/train.py`` would see it."""
    from hydra import compose, initialize_config_dir

    from trainer.engine.run_dir import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name="train", overrides=list(overrides))


def sample_data(out_dir: Path, num_images: int, image_size: tuple[int, int], seed: int = 0,
                val_fraction: float = 0.0) -> Path:
    """The built-in synthetic sample data (reused when already written with the same settings)."""
    marker = out_dir / f".done_{num_images}_{image_size[0]}x{image_size[1]}_{seed}_{val_fraction}"
    if not marker.exists():
        generate_sample_dataset(out_dir, num_images=num_images, seed=seed, image_size=image_size,
                                val_fraction=val_fraction)
        marker.touch()
    return out_dir


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def interleaved(calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 1, min_seconds: float = 0.0,
                max_repeats: int = 40) -> dict[str, list[float]]:
    """Seconds per call of each entry, alternating A, B, A, B... so slow phases of a noisy machine hit both.

    Runs at least ``repeats`` rounds and keeps going (up to ``max_repeats``) until ``min_seconds`` have passed,
    so fast calls get many samples."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    started = time.perf_counter()
    index = 0
    while index < repeats or (time.perf_counter() - started < min_seconds and index < max_repeats):
        # Alternate the order too, so neither side always runs right after the other's cache warm-up.
        names = list(calls) if index % 2 == 0 else list(reversed(calls))
        for name in names:
            times[name].append(timed(calls[name]))
        index += 1
    return times


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over rounds of ``numerator[i] / denominator[i]``: each pair ran back to back, so load that comes
    and goes between rounds cancels within a pair."""
    return float(statistics.median(a / b for a, b in zip(numerator, denominator)))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def machine() -> dict:
    cpu_model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu_model,
        "cpu_cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
