"""``ray job submit`` of a sweep to a Ray head started here with ``ray start --head`` on 127.0.0.1.

The head runs in its own session with a private ``RAY_TMPDIR`` and free ports, so a Ray already running on the
machine is neither joined nor disturbed; it is stopped by pid (its process group, then any stray worker) at the end.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).parent / "ray"
TINY = ["model=custom_detector", "model.min_size=64", "model.max_size=96", "model.base_channels=8",
        "model.fpn_channels=16", "training.num_workers=0", "training.num_epochs=1", "training.batch_size=4",
        "training.eval_batch_size=6", "ema.enabled=false", "training.checkpoint_every_steps=0",
        "sweep.num_samples=2", "sweep.max_concurrent_trials=1", "sweep.resources_per_trial.cpu=2",
        "sweep.scheduler.grace_period=1", "sweep.verbose=0"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _processes_of(ray_tmpdir: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("RAY_TMPDIR") == ray_tmpdir:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


class LocalRayHead:
    def __init__(self):
        self.tmpdir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths have a length limit
        self.dashboard_port = _free_port()
        self.env = {**os.environ, "RAY_TMPDIR": self.tmpdir, "OMP_NUM_THREADS": "1",
                    # Ray's single-machine mode: every Ray port binds to 127.0.0.1 only.
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                    # Token auth with a token of this test's own (the head, `ray job` and the job's driver share
                    # it), independent of any ~/.ray/auth_token on the machine.
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, timeout: float = 120) -> None:
        command = [str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
                   "--num-cpus=2", "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                   f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={_free_port()}",
                   f"--dashboard-agent-listen-port={_free_port()}", "--disable-usage-stats"]
        self.log = open(Path(self.tmpdir) / "head.log", "w")
        self.process = subprocess.Popen(command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"ray start exited:\n{Path(self.log.name).read_text()[-4000:]}"
            status = subprocess.run([str(RAY), "job", "list", "--address", self.address], env=self.env,
                                    capture_output=True, text=True, timeout=60)
            if status.returncode == 0:
                return
            time.sleep(1)
        pytest.fail(f"the Ray head's job API did not come up in {timeout} s:\n{Path(self.log.name).read_text()}")

    def stop(self) -> list[str]:
        """Stops the head by its process group, then any worker it left; returns what had to be killed."""
        if self.process is not None and self.process.poll() is None:
            # What `ray stop` does, for this head only: SIGTERM, a grace period, then SIGKILL (`ray start --block`
            # itself stays up after SIGTERM).
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while (left := _processes_of(self.tmpdir)) and time.monotonic() < deadline:
            time.sleep(0.5)
        for process in left:
            process.kill()
        psutil.wait_procs(left, timeout=10)
        self.log.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        return [f"{p.pid}" for p in left]


@pytest.fixture
def ray_head():
    head = LocalRayHead()
    try:
        head.start()
        yield head
    finally:
        leaked = head.stop()
    assert not leaked, f"Ray processes outlived the head (killed now): {leaked}"


def test_sweep_runs_as_a_ray_job_on_a_started_head(ray_head, sample_dataset_dir, tmp_path):
    root = tmp_path / "multirun"
    sweep = ["python", "trainer/sweep.py", "--config-name=sweep", *TINY,
             f"dataset.train_jsonl={sample_dataset_dir / 'train.jsonl'}",
             f"dataset.val_jsonl={sample_dataset_dir / 'val.jsonl'}",
             f"dataset.train_data_dir={sample_dataset_dir}", f"sweep.root={root}",
             f"sweep.best_config_dir={tmp_path / 'best'}"]
    submit = subprocess.run([str(RAY), "job", "submit", "--address", ray_head.address, "--working-dir", ".", "--",
                             *sweep], cwd=REPO, env=ray_head.env, capture_output=True, text=True, timeout=420)
    output = submit.stdout + submit.stderr
    assert submit.returncode == 0 and "succeeded" in output, output[-6000:]

    [sweep_dir] = [path for path in root.glob("*/*") if path.is_dir()]
    summary = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert summary["num_trials"] == 2 and summary["num_errored"] == 0
    assert Path(summary["best_run_dir"], "best_model.pth").is_file()
    assert (tmp_path / "best" / "custom_detector.yaml").is_file()
