"""Helpers for the evaluation integration tests: a run directory with a tiny random model, and CLI runs."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from trainer.data.classes import ClassMap
from trainer.models import build_model

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("circle", "square", "triangle")  # the sample data's labels


def tiny_model_config() -> dict:
    config = yaml.safe_load((REPO / "configs" / "model" / "custom_detector.yaml").read_text())
    # 128x96 sample images, few channels, and a low score threshold so a random model still predicts boxes.
    config.update(min_size=96, max_size=128, base_channels=8, fpn_channels=16, score_thresh=0.01)
    return config


def make_run_dir(run_dir: Path, with_ema: bool = True, seed: int = 0, dataset_config: dict | None = None) -> Path:
    """RUN/.hydra/config.yaml, RUN/classes.json and RUN/best_model.pth in the trainer's checkpoint format.

    The EMA weights differ from the raw weights, so a test can tell which ones were used.
    """
    torch.manual_seed(seed)
    class_map = ClassMap(CLASSES)
    model_config = tiny_model_config()
    model = build_model(model_config, class_map.num_classes)
    state = model.state_dict()
    ema = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v.clone() for k, v in state.items()}
    config = {"seed": seed, "model": model_config,
              "dataset": dataset_config or {"val_split": 0.25, "clip_tolerance": 0.01}}
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    class_map.save(run_dir / "classes.json")
    torch.save({"format_version": 1, "model": state, "ema": ema if with_ema else None,
                "class_map": {"names": list(CLASSES)}, "config": yaml.safe_dump(config),
                "model_config": model_config, "epoch": 1, "global_step": 10, "metrics": {}},
               run_dir / "best_model.pth")
    return run_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(script: str, *args: str, processes: int = 1, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python trainer/<script>.py args``, or ``accelerate launch`` with the README's CPU config for ``processes`` > 1."""
    launcher = [sys.executable]
    if processes > 1:
        launcher = [sys.executable, "-m", "accelerate.commands.launch",
                    "--config_file", str(REPO / "launch" / "accelerate" / "cpu_2proc.yaml"),
                    "--num_processes", str(processes), "--main_process_port", str(free_port())]
    # One thread per process: deterministic CPU kernels, so 1 and N processes give bitwise equal outputs.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, str(REPO / "trainer" / f"{script}.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
