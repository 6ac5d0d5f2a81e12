"""A Ray Tune trial whose process dies (SIGKILL, as the OOM killer would) is retried from its last checkpoint and the
sweep completes. Uses the sweep tests' RaySandbox so every Ray process of the test is found and stopped by pid."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import yaml

from fault_tools import REPO
from sweep_runs import LOCAL_RAY, TINY, RaySandbox, data_args, ray_sandbox, sweep_command  # noqa: F401 (fixture)

pytestmark = [pytest.mark.faults, pytest.mark.cluster, pytest.mark.slow]
# Long enough that the trial is still training when the kill lands (a tiny epoch takes well under a second).
EPOCHS = 12


def trial_process(sandbox: RaySandbox) -> psutil.Process | None:
    """The Ray worker process that runs the (single) trial: Ray names it after the trainable's actor."""
    for process in sandbox.processes():
        try:
            if "ImplicitFunc" in process.name() or "ImplicitFunc" in " ".join(process.cmdline()):
                return process
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return None


def tune_checkpoint(root: Path) -> Path | None:
    """A Tune checkpoint of the trial, once the driver has recorded a result that carries one.

    Tune resumes a retried trial from its own checkpoint (not the engine's newer ones), and it only knows about one
    after the driver processed the report: result.json holds that result once it has. Any checkpoint will do:
    Tune keeps only the last ``sweep.checkpoints_to_keep``, so on a busy machine the first may be gone already.
    """
    for result in root.glob("*/*/trial_*/result.json"):
        try:
            reported = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        except (OSError, json.JSONDecodeError):
            continue
        checkpoints = sorted(result.parent.glob("checkpoint_*"))
        if reported and checkpoints:
            return checkpoints[0]
    return None


def sweep_with_a_killed_trial(command: list[str], sandbox: RaySandbox, root: Path,
                              kill: Callable[[psutil.Process], None]) -> tuple[Path, dict]:
    """Runs the sweep driver, calls ``kill(the trial's Ray worker)`` once Tune has recorded the trial's first
    checkpoint, and waits for the sweep to end. Returns the sweep folder and the (single) trial's trials.csv row."""
    driver = subprocess.Popen(command, cwd=REPO, env=sandbox.env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while tune_checkpoint(root) is None:
            assert driver.poll() is None, f"the sweep ended before the crash:\n{driver.stdout.read()[-4000:]}"
            assert time.monotonic() < deadline, "no Tune checkpoint within 300 s"
            time.sleep(0.2)
        victim = trial_process(sandbox)
        assert victim is not None, [p.name() for p in sandbox.processes()]
        kill(victim)
        output, _ = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 0, output[-6000:]
    [sweep_dir] = [p for p in root.glob("*/*") if p.is_dir()]
    with open(sweep_dir / "trials.csv", newline="") as handle:
        [trial] = list(csv.DictReader(handle))
    summary = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert summary["num_trials"] == 1 and summary["num_errored"] == 0
    return sweep_dir, trial


def test_a_crashed_trial_is_retried_from_its_checkpoint_and_the_sweep_completes(sample_dataset_dir, tmp_path,
                                                                                ray_sandbox):
    root = tmp_path / "multirun"
    command = sweep_command(*TINY, *LOCAL_RAY, *data_args(sample_dataset_dir), f"sweep.root={root}",
                            f"sweep.best_config_dir={tmp_path / 'best'}", "sweep.num_samples=1",
                            "sweep.max_failures=2", f"training.num_epochs={EPOCHS}",
                            f"sweep.scheduler.grace_period={EPOCHS}")
    _, trial = sweep_with_a_killed_trial(command, ray_sandbox, root, lambda victim: victim.send_signal(signal.SIGKILL))

    assert trial["status"] == "completed" and int(trial["epochs"]) == EPOCHS, trial
    train_log = (Path(trial["run_dir"]) / "train.log").read_text()
    assert train_log.count("resumed from") == 1, "the retry must continue from the checkpoint, not start over"
    with open(Path(trial["run_dir"]) / "metrics.csv", newline="") as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == list(range(1, EPOCHS + 1))
