"""Preemption: SIGUSR1 / SIGTERM ask the loop to checkpoint at the next step boundary and exit.

SLURM sends SIGUSR1 ahead of a time limit (``#SBATCH --signal=USR1@120``) and SIGTERM on preemption or
``scancel``; torchrun / ``accelerate launch`` forward SIGTERM to every worker. The handler only sets
a flag; the loop reduces the flag over all processes so every rank stops at the same step.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing.util  # imported first: registers multiprocessing's exit hook before ours (hooks run last-in first-out)
import signal
import threading

import torch

logger = logging.getLogger(__name__)

# sysexits.h EX_TEMPFAIL ("temporary failure, retry later"): training stopped on a signal after a checkpoint
# was written; requeue the job and it resumes (resume=auto).
EXIT_PREEMPTED = 75
# Training stopped because the loss was non-finite for too many consecutive steps.
EXIT_DIVERGED = 3
# Invalid configuration or data (the message names the file/line/field).
EXIT_BAD_INPUT = 2

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopRequest:
    """Installs handlers for ``STOP_SIGNALS``; ``agreed(accelerator)`` is True on all ranks once any rank got one."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> "StopRequest":
        # Handlers can only be set from the main thread. Elsewhere (Ray Tune runs each trial's train() in a worker
        # thread) the host process owns the signals and stops the run itself, so there is nothing to install.
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def agreed(self, accelerator) -> bool:
        """Collective (every rank calls it at the same step): did any process receive a stop signal?"""
        if accelerator.num_processes == 1:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


@contextlib.contextmanager
def stop_signals_blocked():
    """Block the stop signals while starting data-loader workers (or running code that starts them).

    torchrun and SLURM signal the whole process group; a worker hit before its ``worker_init_fn`` runs would
    die and take the training process down before it can checkpoint. A forked child inherits the forking
    thread's blocked mask, so it never sees the signal; this process still receives it (through another
    thread, or when the block ends) and handles it at the next step boundary.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_stop_signals_in_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a signal sent to the whole process group must not kill the data workers
    before the main process has written its checkpoint (the main process shuts them down itself)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _kill_leftover_workers() -> None:
    """At exit, multiprocessing stops daemonic children with SIGTERM and waits for them; data workers ignore
    SIGTERM, so a loader still referenced then (e.g. by the traceback of the error that ended training) would
    make the process wait forever. Registered after multiprocessing's own exit hook, so it runs first."""
    workers = [child for child in multiprocessing.active_children() if child.daemon]
    if workers and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would report each kill as a worker failure
    for child in workers:
        child.kill()


atexit.register(_kill_leftover_workers)
