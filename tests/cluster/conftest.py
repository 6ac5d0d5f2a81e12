"""A real single-host SLURM (launch/slurm_local.sh) for the cluster tests, and helpers to run jobs on it.

The session fixture installs Debian's slurm-wlm + munge when missing (root only), starts munged, slurmctld and a
slurmd for each of the 2 nodes with their state in a temporary directory and on free ports (so a developer's own
local cluster keeps running), and stops them by pid at the end.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM_LOCAL = REPO / "launch" / "slurm_local.sh"
FINISHED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                   "DEADLINE", "PREEMPTED"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _slurm_missing() -> bool:
    return any(shutil.which(tool) is None for tool in ("munged", "slurmctld", "slurmd", "sbatch"))


class LocalSlurm:
    """A running local cluster: submit batch scripts, watch and signal jobs (all through the real CLI tools)."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.env = {
            **os.environ,
            "SLURM_LOCAL_DIR": str(state_dir),
            "SLURM_LOCAL_CTLD_PORT": str(_free_port()),
            "SLURM_LOCAL_SLURMD_PORT": str(_free_port()),
            "SLURM_CONF": str(state_dir / "etc" / "slurm.conf"),
        }

    def script(self, action: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SLURM_LOCAL), action], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def command(self, *args: str, timeout: float = 30) -> str:
        result = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
        return result.stdout

    def daemon_pids(self) -> dict[str, int]:
        """munged, slurmctld, slurmd-node1, ... -> pid, from the pid files the daemons wrote."""
        return {pidfile.stem: int(pidfile.read_text()) for pidfile in sorted((self.state_dir / "run").glob("*.pid"))}

    def submit(self, batch_script: str, *args: str, options: list[str], env: dict[str, str], output: Path) -> int:
        """``sbatch OPTIONS BATCH_SCRIPT ARGS`` from the repository root; the job's stdout+stderr go to OUTPUT."""
        command = ["sbatch", "--parsable", f"--output={output}", *options, batch_script, *args]
        result = subprocess.run(command, cwd=REPO, env={**self.env, **env}, capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 0, f"sbatch failed: {result.stderr}"
        return int(result.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, ...)."""
        fields = {}
        for token in self.command("scontrol", "show", "job", "--oneliner", str(job_id)).split():
            key, _, value = token.partition("=")
            fields.setdefault(key, value)
        return fields

    def wait(self, job_id: int, output: Path, timeout: float) -> dict[str, str]:
        """Poll until the job has finished (after any requeue); on timeout cancel it and fail with its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["JobState"] in FINISHED_STATES:
                return job
            time.sleep(0.5)
        subprocess.run(["scancel", str(job_id)], env=self.env, timeout=30)
        pytest.fail(f"job {job_id} still {self.job(job_id)['JobState']} after {timeout} s:\n{self.log(output)[-5000:]}")

    @staticmethod
    def log(output: Path) -> str:
        """A job's output; several processes write progress bars into it at once, splitting multi-byte characters."""
        return output.read_text(errors="replace") if output.is_file() else "(no output)"

    def signal_batch_shell(self, job_id: int, sig: signal.Signals) -> None:
        """What SLURM does ahead of a time limit with ``--signal=B:USR1@120``: signal the batch shell only."""
        self.command("scancel", f"--signal={sig.name.removeprefix('SIG')}", "--batch", str(job_id))


@pytest.fixture(scope="session")
def local_slurm(tmp_path_factory) -> LocalSlurm:
    if _slurm_missing() and os.geteuid() != 0:
        pytest.skip("slurm-wlm/munge are not installed and installing them with apt-get needs root")
    if _slurm_missing() and shutil.which("apt-get") is None:
        pytest.skip("slurm-wlm/munge are not installed and there is no apt-get to install them")
    if os.geteuid() != 0:
        pytest.skip("slurmd has to run as root to start jobs (run the cluster tests as root, as CI does)")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        started = cluster.script("start")
        if started.returncode != 0 and _slurm_missing():
            pytest.skip(f"apt-get could not install slurm-wlm/munge:\n{started.stderr[-2000:]}")
        assert started.returncode == 0, f"slurm_local.sh start failed:\n{started.stderr}"
        yield cluster
    finally:  # also after a failed start: stop whatever did come up
        pids = cluster.daemon_pids()
        stopped = cluster.script("stop", timeout=120)
        assert stopped.returncode == 0, f"slurm_local.sh stop failed:\n{stopped.stderr}"
        for name, pid in pids.items():
            assert not Path(f"/proc/{pid}").exists(), f"{name} ({pid}) still running after stop"


@pytest.fixture(scope="session")
def job_env() -> dict[str, str]:
    """Environment the batch scripts run with: this interpreter, one thread per process, offline trackers."""
    return {
        "PYTHON": sys.executable,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
