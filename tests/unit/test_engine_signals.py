"""Stop signals set a flag (no exception in the middle of a step); handlers are restored afterwards."""
from __future__ import annotations

import os
import signal

import pytest

from trainer.engine.signals import EXIT_PREEMPTED, StopRequest, ignore_stop_signals_in_worker


class _SingleProcess:
    num_processes = 1


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_sets_flag_and_handlers_are_restored(sig):
    previous = signal.getsignal(sig)
    stop = StopRequest().install()
    try:
        assert not stop.agreed(_SingleProcess())
        os.kill(os.getpid(), sig)
        assert stop.requested and stop.signal_name == signal.Signals(sig).name
        assert stop.agreed(_SingleProcess())
    finally:
        stop.uninstall()
    assert signal.getsignal(sig) is previous


def test_data_workers_ignore_stop_signals():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        ignore_stop_signals_in_worker(0)
        assert all(signal.getsignal(sig) is signal.SIG_IGN for sig in saved)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_preempted_exit_code_is_distinct():
    assert EXIT_PREEMPTED not in (0, 1, 2, 3)


def test_signal_during_blocked_section_arrives_afterwards_and_children_never_see_it():
    import multiprocessing

    from trainer.engine.signals import stop_signals_blocked

    stop = StopRequest().install()
    child = None
    try:
        with stop_signals_blocked():
            child = multiprocessing.get_context("fork").Process(target=signal.pause)
            child.start()
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(child.pid, signal.SIGTERM)
        # Delivered now at the latest (earlier if another thread of this process took it).
        assert stop.signal_name == "SIGTERM"
        child.join(timeout=0.5)
        assert child.is_alive(), "the child inherited the blocked mask and must survive SIGTERM"
    finally:
        stop.uninstall()
        if child is not None and child.is_alive():
            child.kill()
            child.join(timeout=10)


def test_install_outside_the_main_thread_is_a_no_op():
    import threading

    before = signal.getsignal(signal.SIGTERM)
    outcome = {}

    def run():
        stop = StopRequest().install()
        outcome["requested"] = stop.requested
        stop.uninstall()

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=30)
    assert outcome == {"requested": False}
    assert signal.getsignal(signal.SIGTERM) is before
