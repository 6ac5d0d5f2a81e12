"""How a sweep trial trains: in several processes (torchrun under the Ray trial; 2 gloo processes on the CPUs here,
what ``sweep.resources_per_trial.gpu=N`` does with N GPUs), and with its W&B run in the sweep's group.

The launcher tests run ``trainer.tuning.launcher`` without Ray; the sweep tests start the driver as a real process
in its own ``RaySandbox`` and check that no process of it (Ray's, the trials' torchrun and training processes)
outlives it.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sweep_runs import LOCAL_RAY, REPO, TINY, data_args, ray_sandbox, run, sweep_command  # noqa: F401 (fixture)
from trainer.tuning.launcher import train_in_processes
from wandb_records import offline_runs, run_record

pytestmark = pytest.mark.slow

TWO_PROCESSES_LOG = "processes 2 x batch 2 x accumulation 1 = global batch 4"
SCORE_THRESH_CHOICE = "+sweep.search_space.model.score_thresh={distribution:choice,values:[0.05,1.0]}"
POINT = ("{training:{learning_rate:0.02,weight_decay:1e-4,backbone_lr_factor:0.5,warmup_iters:2},"
         "model:{loss_weights:{classification:1.0,bbox_regression:1.0,bbox_ctrness:1.0},score_thresh:%s}}")
# Trial 1 learns; trial 2 keeps no detection (score_thresh=1.0), scores 0 at the first rung and ASHA stops it.
POINTS = f"sweep.points_to_evaluate=[{POINT % '0.05'},{POINT % '1.0'}]"


def _train_config(dataset_dir: Path, *overrides: str):
    """The sweep tests' tiny training setup as a trial gets it: 2 processes x 2 images = global batch 4."""
    training = [o for o in TINY if not o.startswith("sweep.")]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        return compose("train", overrides=[*training, *data_args(dataset_dir), "training.batch_size=2",
                                           "resume=never", *overrides])


def _processes_of(run_dir: Path) -> list[psutil.Process]:
    """torchrun and the training processes of ``run_dir`` (its path is on their command lines)."""
    found = []
    for process in psutil.process_iter():
        try:
            if str(run_dir) in " ".join(process.cmdline()) and process.pid != os.getpid():
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_launcher_forwards_every_report_with_a_snapshot_and_leaves_nothing(sample_dataset_dir, tmp_path):
    run_dir = tmp_path / "trial"
    reported = []

    def report(record):
        snapshot = Path(record["checkpoint"])
        # Both processes' state, in a directory of its own that the engine does not prune.
        assert snapshot.parent.name.startswith("tune_reports") and snapshot.parent.parent == run_dir
        assert (snapshot / "trainer_state.json").is_file() and (snapshot / "random_states_1.pkl").is_file()
        reported.append((record["epoch"], "mAP" in record["metrics"]))
        shutil.rmtree(snapshot)  # what the trial does once Tune has its copy

    train_in_processes(_train_config(sample_dataset_dir), run_dir, 2, report)

    assert reported == [(1, True), (2, True)]
    assert TWO_PROCESSES_LOG in (run_dir / "train.log").read_text()
    assert not list(run_dir.glob("tune_reports*"))
    assert not _processes_of(run_dir)


def test_training_processes_stop_and_checkpoint_when_the_trial_process_is_killed(sample_dataset_dir, tmp_path):
    run_dir = tmp_path / "trial"
    config = tmp_path / "config.yaml"
    OmegaConf.save(_train_config(sample_dataset_dir, "training.num_epochs=30"), config)
    # Like a Ray trial: the launcher runs in a thread that is not the main one.
    trial = subprocess.Popen([sys.executable, "-c", f"""
import threading
from pathlib import Path
from omegaconf import OmegaConf
from trainer.tuning.launcher import train_in_processes
cfg = OmegaConf.load({str(config)!r})
thread = threading.Thread(target=train_in_processes, args=(cfg, Path({str(run_dir)!r}), 2, print))
thread.start()
thread.join()
"""], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not list(run_dir.glob("tune_reports-*/reports.jsonl")):  # trained and reported an epoch
            assert trial.poll() is None, "the trial process ended before it was killed"
            assert time.monotonic() < deadline, "no report within 180 s"
            time.sleep(0.2)
        training = [process for process in _processes_of(run_dir) if process.pid != trial.pid]
        assert len(training) == 3, [p.cmdline() for p in training]  # torchrun and its 2 workers
        trial.send_signal(signal.SIGKILL)
        trial.wait(timeout=30)
        _, alive = psutil.wait_procs(training, timeout=90)
    finally:
        if trial.poll() is None:
            trial.kill()
            trial.wait(timeout=30)
    for process in alive:
        process.kill()
    assert not alive, f"training processes outlived the killed trial: {[p.pid for p in alive]}"
    log = (run_dir / "train.log").read_text()
    assert "stopping on SIGTERM" in log, log[-3000:]  # they stopped at a step boundary and checkpointed


def _trials(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "trials.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _tune_results(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "result.json").read_text().splitlines() if line.strip()]


@pytest.mark.cluster
def test_two_process_trials_report_every_epoch_stop_cleanly_and_group_their_wandb_runs(sample_dataset_dir, tmp_path,
                                                                                      ray_sandbox):
    root = tmp_path / "multirun"
    # The engine would train 30 epochs; Tune stops every trial (ASHA: trial 2 at its first rung, trial 1 at
    # max_t=2) while its processes are still training, so the stop path runs for both.
    command = sweep_command(*TINY, *LOCAL_RAY, *data_args(sample_dataset_dir), f"sweep.root={root}",
                            f"sweep.best_config_dir={tmp_path / 'best'}", "sweep.name=mp_sweep",
                            "sweep.num_samples=2", "sweep.resources_per_trial.processes=2",
                            "training.batch_size=2", "training.num_epochs=30", "sweep.scheduler.max_t=2",
                            "sweep.scheduler.grace_period=1", "sweep.scheduler.reduction_factor=2",
                            "logger=wandb", SCORE_THRESH_CHOICE, POINTS)
    result = run(command, ray_sandbox.env, timeout=400)
    assert result.returncode == 0, result.stdout[-6000:]
    leaked = ray_sandbox.wait_until_gone(timeout=90)
    assert not leaked, f"still running after the sweep (killed now): {leaked}"

    [sweep_dir] = [path for path in root.glob("*/*") if path.is_dir()]
    trials = _trials(sweep_dir)
    assert [(t["status"], t["epochs"]) for t in trials] == [("completed", "2"), ("stopped_early", "1")], trials
    for trial in trials:
        run_dir = Path(trial["run_dir"])
        # Tune got the metric of every epoch the trial reported, in order, each with a checkpoint.
        reported = _tune_results(run_dir)
        assert [r["training_iteration"] for r in reported] == list(range(1, int(trial["epochs"]) + 1))
        assert [r["epoch"] for r in reported] == [r["training_iteration"] for r in reported]
        assert all("mAP" in r and r["checkpoint_dir_name"] for r in reported), reported
        # Tune's copy of the last reported checkpoint holds both processes' state; no snapshot is left behind.
        [tune_checkpoint] = run_dir.glob("checkpoint_*")
        assert (tune_checkpoint / "trainer_state.json").is_file()
        assert (tune_checkpoint / "random_states_1.pkl").is_file()
        assert not list(run_dir.glob("tune_reports*"))

        log = (run_dir / "train.log").read_text()
        assert TWO_PROCESSES_LOG in log
        # Stopped while training (Tune ended the trial): checkpointed and exited, not killed.
        assert "stopping on SIGTERM" in log, log[-3000:]

        [wandb_log] = offline_runs(run_dir)
        wandb_run = run_record(wandb_log)
        assert (wandb_run.run_group, wandb_run.display_name) == ("mp_sweep", run_dir.name)


@pytest.mark.cluster
def test_a_one_process_trial_names_its_wandb_run_after_the_trial_in_the_sweeps_group(sample_dataset_dir, tmp_path,
                                                                                     ray_sandbox):
    root = tmp_path / "multirun"
    # max_t left null: ASHA's max_t is one past the last epoch, so the trial ends by itself. A one-process trial that
    # Tune stops is killed with its Ray worker a fraction of a second later, and an offline W&B run not finished by
    # then is lost (wandb 0.31 had written nothing but the file header of this small run before finishing).
    command = sweep_command(*TINY, *LOCAL_RAY, *data_args(sample_dataset_dir), f"sweep.root={root}",
                            f"sweep.best_config_dir={tmp_path / 'best'}", "sweep.name=one_process_sweep",
                            "sweep.num_samples=1", "training.num_epochs=1", "sweep.scheduler.grace_period=1",
                            "logger=wandb")
    result = run(command, ray_sandbox.env, timeout=300)
    assert result.returncode == 0, result.stdout[-6000:]

    [sweep_dir] = [path for path in root.glob("*/*") if path.is_dir()]
    [trial] = _trials(sweep_dir)
    run_dir = Path(trial["run_dir"])
    assert "processes 1 x" in (run_dir / "train.log").read_text()
    [wandb_log] = offline_runs(run_dir)
    wandb_run = run_record(wandb_log)
    assert (wandb_run.run_group, wandb_run.display_name) == ("one_process_sweep", run_dir.name)
    assert wandb_run.project == "detection-trainer"
