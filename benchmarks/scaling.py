"""Suite 5, scaling: ``trainer/train.py`` with 1 process vs 2 CPU processes (DDP over gloo) at the same global
batch, and evaluation of one checkpoint with 1 vs 2 processes (the metrics must be identical).

On a GPU machine, ``suite=gpu`` measures the engine's step loop in images/s per GPU with mixed precision off
and on (``gpu_suite``)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.common import REPO_ROOT, SMALL_INPUT, sample_data

ACCELERATE_CPU_2PROC = REPO_ROOT / "launch" / "accelerate" / "cpu_2proc.yaml"


@dataclass
class ScalingSettings:
    model: str = "custom_detector"
    num_images: int = 24        # training images (+ 8 val)
    global_batch: int = 4
    epochs: int = 2             # throughput from the last epoch (the first one includes warm-up)
    timeout_s: int = 600


def _run(command: list[str], threads: int, timeout_s: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def _launcher(processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CPU_2PROC),
            "--num_processes", str(processes)]


def train(processes: int, data_dir: Path, run_dir: Path, settings: ScalingSettings) -> dict:
    _run([*_launcher(processes), "trainer/train.py", f"model={settings.model}", *SMALL_INPUT.get(settings.model, []),
          f"dataset.dataset_dir={data_dir}", "dataset.augmentation=flip", "logger=none", "ema.enabled=true",
          f"training.batch_size={settings.global_batch // processes}", f"training.num_epochs={settings.epochs}",
          "training.num_workers=0", "training.checkpoint_every_steps=0", f"hydra.run.dir={run_dir}"],
         threads=max(1, torch.get_num_threads() // processes), timeout_s=settings.timeout_s)
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    last = rows[-1]
    return {"processes": processes, "images_per_s": float(last["images_per_s"]), "loss": float(last["loss"]),
            "mAP": float(last["mAP"]) if last.get("mAP") else None}


def evaluate(processes: int, data_dir: Path, run_dir: Path, out_dir: Path, settings: ScalingSettings) -> dict:
    _run([*_launcher(processes), "trainer/evaluate.py", f"dataset_dir={data_dir}", f"run_dir={run_dir}",
          "split=val", "num_workers=0", "num_visualizations=0", f"output_dir={out_dir}"],
         threads=max(1, torch.get_num_threads() // processes), timeout_s=settings.timeout_s)
    (metrics_file,) = out_dir.glob("*_metrics.json")
    return json.loads(metrics_file.read_text())["stats"]


def run(work_dir: Path, settings: ScalingSettings) -> dict:
    data_dir = sample_data(work_dir / "scaling_data", settings.num_images + 8, (320, 240), val_fraction=0.25)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = {p: train(p, data_dir, tmp / f"train_{p}", settings) for p in (1, 2)}
        stats = {p: evaluate(p, data_dir, tmp / "train_1", tmp / f"eval_{p}", settings) for p in (1, 2)}
    return {"model": settings.model, "global_batch": settings.global_batch, "train": [runs[1], runs[2]],
            "throughput_ratio": runs[2]["images_per_s"] / runs[1]["images_per_s"],
            "eval_stats_identical": stats[1] == stats[2], "eval_stats": stats[1],
            "threads_per_process": {p: max(1, torch.get_num_threads() // p) for p in (1, 2)}}


def gpu_suite(work_dir: Path, models: list[str]) -> dict:
    """Images/s per GPU of the engine's step loop with mixed precision no / bf16 / fp16 (one process each)."""
    if not torch.cuda.is_available():
        return {"measured": False, "reason": "no GPU was measured: torch.cuda.is_available() is False on this "
                                             "machine (CPU only)"}
    rows = []
    for model in models:
        for precision in ("no", "bf16", "fp16"):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp)
                _run([sys.executable, "benchmarks/run.py", "suite=train", f"models=[{model}]",
                      f"mixed_precision={precision}", f"out={out}"], threads=torch.get_num_threads(), timeout_s=1200)
                row = json.loads((out / "latest.json").read_text())["suites"]["train"]["rows"][0]
            rows.append({"model": model, "mixed_precision": precision, "ours_img_s_per_gpu": row["ours_img_s"],
                         "bare_img_s_per_gpu": row["bare_img_s"], "ratio": row["ratio"]})
    return {"measured": True, "device": torch.cuda.get_device_name(0), "rows": rows}


def to_markdown(result: dict) -> str:
    one, two = result["train"]
    return "\n".join([
        f"`trainer/train.py`, {result['model']} (small input), global batch {result['global_batch']}; the same CPU "
        f"cores, {result['threads_per_process'][1]} torch thread(s) in the single process, "
        f"{result['threads_per_process'][2]} in each of the two.", "",
        "| processes | train img/s (last epoch) | loss | 2 vs 1 |", "|---|---|---|---|",
        f"| 1 | {one['images_per_s']:.2f} | {one['loss']:.4f} | |",
        f"| 2 | {two['images_per_s']:.2f} | {two['loss']:.4f} | {result['throughput_ratio']:.2f}x |", "",
        f"Evaluation of one checkpoint with 1 vs 2 processes: 12 COCO stats "
        f"{'identical' if result['eval_stats_identical'] else 'DIFFERENT'} (mAP {result['eval_stats']['AP']})."])


def gpu_markdown(result: dict) -> str:
    if not result["measured"]:
        return f"**{result['reason'][0].upper() + result['reason'][1:]}.**"
    lines = [f"{result['device']}, one process.", "",
             "| model | mixed precision | ours img/s per GPU | bare img/s | ours / bare |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['mixed_precision']} | {r['ours_img_s_per_gpu']:.1f} | "
                     f"{r['bare_img_s_per_gpu']:.1f} | {r['ratio']:.3f}x |")
    return "\n".join(lines)
