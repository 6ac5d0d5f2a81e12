"""Helpers for the sweep tests: run ``trainer/sweep.py`` as a real process, and keep its Ray processes in a box.

Every Ray process a test starts inherits ``RAY_TMPDIR`` pointing at the test's own temporary folder, so the test
can find exactly its processes (workers rename themselves ``ray::IDLE``, so the command line is no use) and stop
them by pid, leaving any other Ray on the machine alone.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
SWEEP_SCRIPT = REPO / "trainer" / "sweep.py"
# A small custom_detector on the 128x96 sample images, two epochs, one trial at a time on the 2 test CPUs.
TINY = ["model=custom_detector", "model.min_size=64", "model.max_size=96", "model.base_channels=8",
        "model.fpn_channels=16", "training.num_workers=0", "training.num_epochs=2", "training.batch_size=4",
        "training.eval_batch_size=6", "ema.enabled=false", "training.checkpoint_every_steps=0",
        "sweep.max_concurrent_trials=1", "sweep.resources_per_trial.cpu=2", "sweep.n_startup_trials=2",
        "sweep.search_space.training.learning_rate.low=0.005", "sweep.search_space.training.learning_rate.high=0.05",
        "sweep.search_space.training.warmup_iters.high=4", "sweep.verbose=0"]
LOCAL_RAY = ["ray.num_cpus=2", "ray.include_dashboard=false"]


def data_args(dataset_dir: Path) -> list[str]:
    return [f"dataset.train_jsonl={dataset_dir / 'train.jsonl'}", f"dataset.val_jsonl={dataset_dir / 'val.jsonl'}",
            f"dataset.train_data_dir={dataset_dir}"]


def sweep_command(*overrides: str) -> list[str]:
    return [sys.executable, str(SWEEP_SCRIPT), "--config-name=sweep", *overrides]


class RaySandbox:
    """A private ``RAY_TMPDIR`` (short: Ray's socket paths must stay under 108 bytes) and its processes."""

    def __init__(self):
        self.tmpdir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
        self.env = {**os.environ, "RAY_TMPDIR": self.tmpdir, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def processes(self) -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter():
            try:
                if process.pid != os.getpid() and process.environ().get("RAY_TMPDIR") == self.tmpdir:
                    found.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def wait_until_gone(self, timeout: float) -> list[str]:
        """Waits for this box's processes to exit; kills (by pid) those still there at ``timeout``.
        Returns the ones that had to be killed."""
        deadline = time.monotonic() + timeout
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.5)
        leaked = []
        for process in left:
            try:
                leaked.append(f"{process.pid} {process.name()}")
                process.kill()
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(left, timeout=10)
        return leaked

    def close(self) -> list[str]:
        leaked = self.wait_until_gone(timeout=30)
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        return leaked


def run(command: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Runs from the repository root; on timeout the whole process group is killed and the test fails."""
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(f"{' '.join(command)} still running after {timeout} s:\n{output[-6000:]}") from None
    return subprocess.CompletedProcess(command, process.returncode, output, "")


@pytest.fixture
def ray_sandbox():
    """A RaySandbox for one test; fails the test if any of its Ray processes outlives it."""
    sandbox = RaySandbox()
    yield sandbox
    leaked = sandbox.close()
    assert not leaked, f"Ray processes still running after the test (killed now): {leaked}"
