"""A trial training in 2 processes (torchrun under the Ray trial) whose Ray worker is SIGKILLed, as the OOM killer
would: its training processes stop by themselves (checkpoint, exit) instead of training on as orphans, and Tune's
retry resumes the trial from its last Tune checkpoint in new training processes."""
from __future__ import annotations

import csv
import signal
from pathlib import Path

import psutil
import pytest

from sweep_runs import LOCAL_RAY, TINY, data_args, ray_sandbox, sweep_command  # noqa: F401 (fixture)
from test_sweep_faults import sweep_with_a_killed_trial

pytestmark = [pytest.mark.faults, pytest.mark.cluster, pytest.mark.slow]
# Long enough that the trial is still training when the kill lands.
EPOCHS = 12


def test_a_killed_multi_process_trial_leaves_no_orphans_and_resumes_from_its_checkpoint(sample_dataset_dir, tmp_path,
                                                                                        ray_sandbox):
    root = tmp_path / "multirun"
    command = sweep_command(*TINY, *LOCAL_RAY, *data_args(sample_dataset_dir), f"sweep.root={root}",
                            f"sweep.best_config_dir={tmp_path / 'best'}", "sweep.num_samples=1",
                            "sweep.max_failures=2", "sweep.resources_per_trial.processes=2", "training.batch_size=2",
                            f"training.num_epochs={EPOCHS}", f"sweep.scheduler.grace_period={EPOCHS}")

    def kill_and_expect_no_orphans(victim: psutil.Process) -> None:
        torchrun = victim.children()
        training = [*torchrun, *(worker for process in torchrun for worker in process.children())]
        assert len(training) == 3, [p.cmdline() for p in training]  # torchrun and its 2 workers
        victim.send_signal(signal.SIGKILL)
        # They exit by themselves (the kernel's death signal, then the engine's stop), before any retry starts.
        _, orphans = psutil.wait_procs(training, timeout=90)
        for process in orphans:
            process.kill()
        assert not orphans, f"training processes outlived their killed trial: {[p.pid for p in orphans]}"

    _, trial = sweep_with_a_killed_trial(command, ray_sandbox, root, kill_and_expect_no_orphans)

    assert trial["status"] == "completed" and int(trial["epochs"]) == EPOCHS, trial
    run_dir = Path(trial["run_dir"])
    train_log = (run_dir / "train.log").read_text()
    assert "stopping on SIGTERM" in train_log, "the orphaned processes must stop at a step boundary"
    assert train_log.count("resumed from") == 1, "the retry must continue from the checkpoint, not start over"
    assert train_log.count("processes 2 x batch 2") == 2  # the first attempt and the retry
    assert not list(run_dir.glob("tune_reports*"))
    with open(run_dir / "metrics.csv", newline="") as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == list(range(1, EPOCHS + 1))
