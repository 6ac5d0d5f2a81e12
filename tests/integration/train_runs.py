"""Helpers for the training integration tests: run ``trainer/train.py`` as a real process on tiny settings."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = REPO / "trainer" / "train.py"
# A small custom_detector on 128x96 images: a CPU step takes a fraction of a second.
TINY = ["model=custom_detector", "model.min_size=96", "model.max_size=128", "model.base_channels=8",
        "model.fpn_channels=16", "training.num_workers=0", "training.warmup_iters=3", "training.log_every_steps=1",
        "training.eval_batch_size=6", "training.batch_size=4", "training.num_epochs=2", "seed=3"]


def data_args(dataset_dir: Path) -> list[str]:
    return [f"dataset.train_jsonl={dataset_dir / 'train.jsonl'}", f"dataset.val_jsonl={dataset_dir / 'val.jsonl'}",
            f"dataset.train_data_dir={dataset_dir}"]


def train_env(**extra: str) -> dict[str, str]:
    # One thread per process: deterministic CPU kernels (bitwise resume) and polite to the shared CI cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", **extra}


def train_command(dataset_dir: Path, run_dir: Path | None, *overrides: str, processes: int = 1) -> list[str]:
    launcher = [sys.executable]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    run = [f"hydra.run.dir={run_dir}"] if run_dir is not None else []
    return [*launcher, str(TRAIN_SCRIPT), *TINY, *data_args(dataset_dir), *run, *overrides]


def run_training(command: list[str], timeout: float = 240, cwd: Path | None = None,
                 env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd or REPO, env=env or train_env(), capture_output=True, text=True,
                          timeout=timeout)


def start_training(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO, env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def last_state(run_dir: Path) -> dict | None:
    """trainer_state.json of ``checkpoints/last`` (None until one exists; a save in progress is invisible)."""
    try:
        return json.loads((run_dir / "checkpoints" / "last" / "trainer_state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def wait_for_checkpoint(process: subprocess.Popen, run_dir: Path, predicate, timeout: float = 180) -> dict:
    """Poll until ``checkpoints/last`` satisfies ``predicate(state)``; fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = last_state(run_dir)
        if state is not None and predicate(state):
            return state
        if process.poll() is not None:
            raise AssertionError(f"training exited ({process.returncode}) before the checkpoint appeared:\n"
                                 f"{process.stdout.read()[-3000:]}")
        time.sleep(0.02)
    stop(process)
    raise AssertionError(f"no matching checkpoint in {run_dir} after {timeout} s")


def stop(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
        process.wait(timeout=60)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """Model, EMA and optimizer state of the last checkpoint, flattened to name -> tensor."""
    from safetensors.torch import load_file

    last = run_dir / "checkpoints" / "last"
    weights = {f"model.{k}": v for k, v in load_file(last / "model.safetensors").items()}
    weights.update({f"ema.{k}": v for k, v in torch.load(last / "ema.pt", weights_only=True)["module"].items()})
    optimizer = torch.load(last / "optimizer.bin", weights_only=True)
    for index, state in optimizer["state"].items():
        weights[f"momentum.{index}"] = state["momentum_buffer"]
    return weights


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def assert_ok(result: subprocess.CompletedProcess, code: int = 0) -> None:
    assert result.returncode == code, f"exit {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
