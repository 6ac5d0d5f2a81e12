"""A SLURM job that runs into its real time limit: SLURM signals the batch script ahead of the limit
(``--signal=B:USR1@...``), the trainer checkpoints and exits, the script requeues the job and the requeued job
resumes and finishes. Uses the real local SLURM of tests/cluster (its fixtures, loaded from its conftest)."""
from __future__ import annotations

import importlib.util
import re

import pytest

from fault_tools import REPO

pytestmark = [pytest.mark.faults, pytest.mark.cluster, pytest.mark.slow]


def _cluster_fixtures():
    spec = importlib.util.spec_from_file_location("cluster_fixtures", REPO / "tests" / "cluster" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_cluster = _cluster_fixtures()
local_slurm = _cluster.local_slurm
job_env = _cluster.job_env

# slurmctld checks time limits every 30 s and sends the --signal warning at the first check within 30 s of the
# requested time: with a 3 minute limit and USR1@60 the signal comes 60 to 90 s after the start.
TIME_LIMIT = "00:03:00"
WARNING = "B:USR1@60"
EPOCHS = 150  # ~4 optimizer steps per epoch: longer than one allocation under CI load, short enough for two or three
TRAIN_OVERRIDES = ["model=custom_detector", "model.min_size=96", "model.max_size=128", "model.base_channels=8",
                   "model.fpn_channels=16", "training.num_workers=0", "training.warmup_iters=3",
                   "training.batch_size=4", "training.eval_batch_size=6", f"training.num_epochs={EPOCHS}",
                   "training.eval_every=50", "training.checkpoint_every_steps=8", "logger=none", "seed=3"]
JOB_TIMEOUT_S = 900


def test_job_at_its_time_limit_checkpoints_requeues_and_resumes(local_slurm, job_env, sample_dataset_dir, tmp_path):
    output = tmp_path / "job.out"
    data = [f"dataset.train_jsonl={sample_dataset_dir / 'train.jsonl'}",
            f"dataset.val_jsonl={sample_dataset_dir / 'val.jsonl'}", f"dataset.train_data_dir={sample_dataset_dir}"]
    job_id = local_slurm.submit(
        "slurm/train.sbatch", *TRAIN_OVERRIDES, *data,
        options=["--gres=none", "--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=1", f"--time={TIME_LIMIT}",
                 f"--signal={WARNING}"],
        env={**job_env, "RUN_ROOT": str(tmp_path / "outputs")}, output=output)
    job = local_slurm.wait(job_id, output, timeout=JOB_TIMEOUT_S)
    log = output.read_text()
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
    restarts = int(job["Restarts"])
    assert restarts >= 1, f"the job finished within one allocation; make the training longer:\n{log[-3000:]}"
    assert log.count("stopping on SIGUSR1 after global step") == restarts
    assert log.count(f"requeueing job {job_id}") == restarts
    train_log = (tmp_path / "outputs" / f"slurm-{job_id}" / "train.log").read_text()
    assert train_log.count("resumed from") == restarts
    assert f"training completed after {EPOCHS} epochs" in train_log
    # Each allocation continued where the previous one checkpointed: no optimizer step was lost or repeated.
    stops = [int(s) for s in re.findall(r"stopping on SIGUSR1 after global step (\d+)", train_log)]
    resumes = [int(s) for s in re.findall(r"resumed from .*global step (\d+)", train_log)]
    assert stops == resumes, (stops, resumes)
