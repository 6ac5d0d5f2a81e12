"""A multi-process trial: the engine runs under torchrun (``trainer.tuning.worker``) as a child of the Ray trial,
which forwards the children's reports to Tune and makes sure they do not outlive it.

- torchrun runs in its own process group, and the kernel sends it SIGTERM when the trial thread that started it
  exits (a killed Ray worker included). It starts each worker in a session of its own; the workers ask the kernel
  for SIGTERM when torchrun dies.
- When the trial function ends while they still train (ASHA stopped the trial inside ``tune.report``, an
  error), torchrun's process group gets SIGTERM: torchrun passes it on to its workers, which checkpoint
  and exit; whatever is left after ``STOP_TIMEOUT_S`` is killed.
- Ray does not wait for that when Tune stops a trial: it ends the trial's worker process within a fraction of a
  second and kills its child torchrun. The workers then get their own SIGTERM, checkpoint, exit, and delete the
  reports nobody will read (``trainer.tuning.worker``).
- ``--standalone`` picks a free rendezvous port, so trials sharing a node do not collide. The children inherit
  the trial's environment, CUDA_VISIBLE_DEVICES (Ray's GPUs for this trial) included.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import psutil
from omegaconf import DictConfig, OmegaConf

import trainer
from trainer.tuning.reports import REPORTS_ENV, ReportReader

TRIAL_CONFIG_FILE = "trial_config.yaml"
REPORTS_PREFIX = "tune_reports-"
POLL_S = 0.5  # at most this late the trial notices a report or the end of training
# Longer than torchrun's own grace period (30 s) before it kills workers that ignore its SIGTERM.
STOP_TIMEOUT_S = 60.0
KILL_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1


def death_signal_setter(sig: signal.Signals) -> Callable[[], None]:
    """A function that makes its caller receive ``sig`` when the thread that started it exits (Linux
    ``PR_SET_PDEATHSIG``). libc is looked up here, before any fork: a ``preexec_fn`` must only call it."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def set_death_signal() -> None:
        if prctl(_PR_SET_PDEATHSIG, int(sig)) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")

    return set_death_signal


def torchrun_command(processes: int, config_path: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            "-m", "trainer.tuning.worker", str(config_path), str(run_dir)]


def train_in_processes(cfg: DictConfig, run_dir: Path, processes: int, report: Callable[[dict], None]) -> None:
    """Trains ``cfg`` in ``run_dir`` with ``processes`` torchrun workers; ``report(record)`` runs in this thread for
    each validation (records: see ``trainer.tuning.reports``). Raises RuntimeError if training failed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_leftover_reports(run_dir)
    reports_dir = Path(tempfile.mkdtemp(prefix=REPORTS_PREFIX, dir=run_dir))
    config_path = run_dir / TRIAL_CONFIG_FILE
    OmegaConf.save(cfg, config_path)
    # The children import the same ``trainer`` as this process, wherever the trial's working directory is.
    package_root = str(Path(trainer.__file__).resolve().parents[1])
    env = {**os.environ, REPORTS_ENV: str(reports_dir),
           "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    # Started by the thread that waits on it: the death signal fires when the forking thread exits.
    child = subprocess.Popen(torchrun_command(processes, config_path, run_dir), env=env, start_new_session=True,
                             preexec_fn=death_signal_setter(signal.SIGTERM))
    try:
        returncode = forward_reports(child, ReportReader(reports_dir), report)
    finally:
        stop(child)
        shutil.rmtree(reports_dir, ignore_errors=True)
    if returncode != 0:
        raise RuntimeError(f"the trial's {processes} training processes (torchrun) exited with code {returncode}; "
                           f"see {run_dir / 'train.log'}")


def remove_leftover_reports(run_dir: Path) -> None:
    """Reports directories of trials that Ray ended before they could delete them (the snapshots in them keep
    pruned checkpoints on disk). Called when a trial starts again and, for all trials, when the sweep ends."""
    for leftover in run_dir.glob(f"{REPORTS_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)


def forward_reports(child: subprocess.Popen, reader: ReportReader, report: Callable[[dict], None]) -> int:
    """``report(record)`` for every record until ``child`` exits; returns its exit code."""
    while True:
        try:
            returncode = child.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            returncode = None
        # Read after the wait: once the child has exited, all its records are in the file.
        for record in reader.new_records():
            report(record)
        if returncode is not None:
            return returncode


def stop(child: subprocess.Popen) -> None:
    """SIGTERM to ``child``'s process group; SIGKILL to whatever of it and its descendants is left after
    ``STOP_TIMEOUT_S``. torchrun starts each worker in a session of its own, so they are looked up first."""
    if child.poll() is not None:
        return
    try:
        tree = [psutil.Process(child.pid), *psutil.Process(child.pid).children(recursive=True)]
    except psutil.NoSuchProcess:  # exited just now
        tree = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=STOP_TIMEOUT_S)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=KILL_TIMEOUT_S)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=KILL_TIMEOUT_S)  # reaped above already, or a zombie now: updates child.returncode
