"""A SLURM job that runs into its real time limit: SLURM signals the batch script ahead of the limit
(``--signal=B:USR1@...``), the trainer checkpoints and exits, the script requeues the job and the requeued job
resumes and finishes. Uses the real local SLURM of tests/cluster (its fixtures, loaded from its conftest)."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import time
from pathlib import Path

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

# The time-limit warning (USR1 to the batch script, 60 s ahead) is sent at slurmctld's periodic check, so it comes
# one to two minutes after the start. Training is endless here; the test cancels the job once the requeued
# allocation has resumed and trained further.
TIME_LIMIT = "00:03:00"
WARNING = "B:USR1@60"
TRAIN_OVERRIDES = ["model=custom_detector", "model.min_size=96", "model.max_size=128", "model.base_channels=8",
                   "model.fpn_channels=16", "training.num_workers=0", "training.warmup_iters=3",
                   "training.batch_size=4", "training.num_epochs=100000", "training.eval_every=0",
                   "training.checkpoint_every_steps=20", "logger=none", "seed=3"]
TIMEOUT_S = 600


def test_job_at_its_time_limit_checkpoints_requeues_and_resumes(local_slurm, job_env, sample_dataset_dir, tmp_path):
    output = tmp_path / "job.out"
    data = [f"dataset.train_jsonl={sample_dataset_dir / 'train.jsonl'}",
            f"dataset.val_jsonl={sample_dataset_dir / 'val.jsonl'}", f"dataset.train_data_dir={sample_dataset_dir}"]
    job_id = local_slurm.submit(
        "slurm/train.sbatch", *TRAIN_OVERRIDES, *data,
        options=["--gres=none", "--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=1", f"--time={TIME_LIMIT}",
                 f"--signal={WARNING}"],
        env={**job_env, "RUN_ROOT": str(tmp_path / "outputs")}, output=output)
    run_dir = tmp_path / "outputs" / f"slurm-{job_id}"
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while True:
            resumed = _resumed_at(run_dir)
            state = _last_state(run_dir)
            if resumed is not None and state is not None and state["global_step"] > resumed:
                break  # the requeued allocation resumed and checkpointed further progress
            job = local_slurm.job(job_id)
            assert job["JobState"] not in _cluster.FINISHED_STATES, f"{job['JobState']}:\n{_tail(output)}"
            assert time.monotonic() < deadline, f"no resumed progress after {TIMEOUT_S} s:\n{_tail(output)}"
            time.sleep(0.5)
    finally:
        subprocess.run(["scancel", str(job_id)], env=local_slurm.env, timeout=30)
    job = local_slurm.wait(job_id, output, timeout=120)
    log = _tail(output, 100_000)
    assert int(job["Restarts"]) >= 1, log[-3000:]
    assert f"requeueing job {job_id}" in log and f"job {job_id} restart 1:" in log
    # The first allocation stopped on the time-limit warning at a checkpoint; the second continued from exactly there.
    stopped = re.findall(r"stopping on SIGUSR1 after global step (\d+)", (run_dir / "train.log").read_text())
    assert stopped and int(stopped[0]) == resumed, (stopped, resumed)


def _tail(path: Path, size: int = 4000) -> str:
    # Progress bars of two allocations appended to one file can split a multi-byte character.
    return path.read_text(errors="replace")[-size:] if path.is_file() else "(no output yet)"


def _resumed_at(run_dir: Path) -> int | None:
    """The global step the first resume started from, once train.log says so."""
    try:
        found = re.search(r"resumed from .*global step (\d+)", (run_dir / "train.log").read_text())
    except FileNotFoundError:
        return None
    return int(found.group(1)) if found else None


def _last_state(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "checkpoints" / "last" / "trainer_state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
