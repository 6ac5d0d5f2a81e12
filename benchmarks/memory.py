"""Suite 6, memory: peak RSS of training and of evaluation per model at the default batch size and input size.

Each measurement runs in a fresh process (``python -m benchmarks.memory MODE MODEL DATA_DIR``) that reports its
own peak (``VmHWM``); the baseline is its resident memory after the imports, before any model exists
(importing torch alone peaks at ~0.6 GB here).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import BCCD_DIR, REPO_ROOT, sample_data


@dataclass
class MemorySettings:
    steps: int = 2          # training steps measured (the peak is reached in the first backward pass)
    eval_images: int = 8
    timeout_s: int = 600


def peak_rss_mb() -> float:
    """This process's peak resident memory. ``VmHWM`` belongs to the process image (reset by exec), unlike
    ``getrusage``'s ``ru_maxrss``, which a child inherits from the parent it was forked from."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux (macOS: bytes)


def measure_in_this_process(mode: str, model: str, data_dir: Path, steps: int, eval_images: int) -> dict:
    import torch

    from benchmarks.training import engine_round
    from trainer.engine.loop import Trainer, build_accelerator
    from trainer.engine.signals import StopRequest
    from trainer.evaluation.distributed import evaluate_model
    from benchmarks.common import compose_train_config

    import psutil

    baseline = psutil.Process().memory_info().rss / 2**20  # after the imports, before any model or data
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = compose_train_config([f"model={model}", f"dataset.train_jsonl={data_dir / 'train.jsonl'}",
                                    f"dataset.val_jsonl={data_dir / 'val.jsonl'}", "logger=none",
                                    "training.num_workers=0", "training.checkpoint_every_steps=0"])
        trainer = Trainer(cfg, build_accelerator(cfg.training), Path(run_dir), report_fn=None)
        trainer.setup()
        batch = int(cfg.training.batch_size if mode == "train" else cfg.training.eval_batch_size)
        if mode == "train":
            trainer.steps_per_epoch = steps  # a few steps of the real loop: the peak is reached in the first
            engine_round(trainer, StopRequest())
        else:
            subset = torch.utils.data.Subset(trainer.val_set, range(eval_images))
            subset.records = trainer.val_set.records[:eval_images]
            subset.class_map = trainer.val_set.class_map
            evaluate_model(trainer.ema.module if trainer.ema else trainer.model, subset, trainer.accelerator,
                           batch_size=batch)
    return {"mode": mode, "model": model, "batch_size": batch, "baseline_mb": baseline, "peak_mb": peak_rss_mb()}


def measure(mode: str, model: str, data_dir: Path, settings: MemorySettings) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.memory", mode, model, str(data_dir),
                           str(settings.steps), str(settings.eval_images)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=settings.timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe {mode} {model} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(models: list[str], work_dir: Path, settings: MemorySettings) -> dict:
    if (BCCD_DIR / "train.jsonl").is_file():
        data_dir, source = BCCD_DIR, "bccd 640x480 JPEG"
    else:
        data_dir, source = sample_data(work_dir / "memory_data", 24, (640, 480), val_fraction=0.5), "synthetic 640x480"
    rows = [measure(mode, model, data_dir, settings) for model in models for mode in ("train", "eval")]
    return {"images": source, "rows": rows}


def to_markdown(result: dict) -> str:
    lines = [f"Default batch size and input size of each model config, {result['images']} images, data loader "
             "workers off (each worker adds its own RSS). Baseline = the process's resident memory after its imports.", "",
             "| model | mode | batch | peak RSS MB | baseline MB | peak - baseline MB |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['mode']} | {r['batch_size']} | {r['peak_mb']:.0f} | {r['baseline_mb']:.0f} "
                     f"| {r['peak_mb'] - r['baseline_mb']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    mode_arg, model_arg, data_arg, steps_arg, eval_arg = sys.argv[1:6]
    print(json.dumps(measure_in_this_process(mode_arg, model_arg, Path(data_arg), int(steps_arg), int(eval_arg))))
