"""slurm/train.sbatch on the real local SLURM (2 nodes on 127.0.0.1): gloo DDP on CPU, on one node and across two,
then preemption -> requeue -> resume, and scancel (SIGTERM) -> checkpoint -> exit."""
from __future__ import annotations

import csv
import json
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# A small custom_detector on 128x96 images, 2 processes x batch 2: 18 train images -> 4 optimizer steps per epoch.
TRAIN_OVERRIDES = ["model=custom_detector", "model.min_size=96", "model.max_size=128", "model.base_channels=8",
                   "model.fpn_channels=16", "training.num_workers=0", "training.warmup_iters=3",
                   "training.batch_size=2", "training.eval_batch_size=6", "training.num_epochs=4",
                   "training.checkpoint_every_steps=2", "training.log_every_steps=1", "logger=none", "seed=3"]
# CPU-only nodes, so no GPU request. One node with 2 tasks = 2 training processes under one `accelerate launch`;
# two nodes with 1 task each = one `accelerate launch` per node, 1 process each. Either way world size 2.
ONE_NODE = ["--gres=none", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=00:10:00"]
TWO_NODES = ["--gres=none", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--time=00:10:00"]
JOB_TIMEOUT_S = 240
# Columns that depend on wall-clock time, not on the training.
TIMING_COLUMNS = {"epoch_time_s", "images_per_s"}


def submit_training(local_slurm, job_env, dataset_dir: Path, work_dir: Path, options: list[str]) -> tuple[int, Path]:
    output = work_dir / "job.out"
    data = [f"dataset.train_jsonl={dataset_dir / 'train.jsonl'}", f"dataset.val_jsonl={dataset_dir / 'val.jsonl'}",
            f"dataset.train_data_dir={dataset_dir}"]
    job_id = local_slurm.submit("slurm/train.sbatch", *TRAIN_OVERRIDES, *data, options=options,
                                env={**job_env, "RUN_ROOT": str(work_dir / "outputs")}, output=output)
    return job_id, output


def run_dir_of(work_dir: Path, job_id: int) -> Path:
    return work_dir / "outputs" / f"slurm-{job_id}"


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as handle:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(handle)]


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last"


def trainer_state(run_dir: Path) -> dict | None:
    try:
        return json.loads((last_checkpoint(run_dir) / "trainer_state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # none yet, or being replaced
        return None


@pytest.fixture(scope="module")
def uninterrupted(local_slurm, job_env, sample_dataset_dir, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("train_job")
    job_id, output = submit_training(local_slurm, job_env, sample_dataset_dir, work_dir, ONE_NODE)
    job = local_slurm.wait(job_id, output, timeout=JOB_TIMEOUT_S)
    return job, run_dir_of(work_dir, job_id), local_slurm.log(output)


def test_two_process_job_trains_in_the_job_id_run_dir(uninterrupted):
    job, run_dir, log = uninterrupted
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "0"), log[-4000:]
    for name in ("train.log", "metrics.csv", "classes.json", "best_model.pth", ".hydra/config.yaml"):
        assert (run_dir / name).is_file(), name
    assert "1 node(s) x 2 process(es)" in log
    assert "training completed after 4 epochs (global step 16)" in (run_dir / "train.log").read_text()
    rows = metrics_rows(run_dir)
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4]
    assert all(float(row["loss"]) > 0 and 0 <= float(row["mAP"]) <= 1 for row in rows)


def test_both_ranks_took_part(uninterrupted):
    _, run_dir, _ = uninterrupted
    # The global batch is 2 processes x 2 images: 4 steps per epoch over 18 images (one process alone: 9).
    assert "processes 2 x batch 2 x accumulation 1 = global batch 4" in (run_dir / "train.log").read_text()
    assert [int(row["global_step"]) for row in metrics_rows(run_dir)] == [4, 8, 12, 16]
    assert trainer_state(run_dir)["num_processes"] == 2
    # Every process saves its own RNG state into each checkpoint.
    assert sorted(p.name for p in last_checkpoint(run_dir).glob("random_states_*.pkl")) == \
        ["random_states_0.pkl", "random_states_1.pkl"]


def wait_for_training_step(local_slurm, job_id: int, output: Path, run_dir: Path, step: int) -> None:
    """Poll until a periodic checkpoint at global step >= STEP exists (training under way)."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (state := trainer_state(run_dir)) is None or state["global_step"] < step:
        assert local_slurm.job(job_id)["JobState"] in {"PENDING", "CONFIGURING", "RUNNING"}, local_slurm.log(output)
        assert time.monotonic() < deadline, f"no checkpoint in {run_dir}:\n{local_slurm.log(output)[-4000:]}"
        time.sleep(0.05)


def test_preempted_two_node_job_is_requeued_and_ends_like_the_uninterrupted_one(local_slurm, job_env,
                                                                                 sample_dataset_dir, tmp_path,
                                                                                 uninterrupted):
    _, reference_dir, _ = uninterrupted
    job_id, output = submit_training(local_slurm, job_env, sample_dataset_dir, tmp_path, TWO_NODES)
    run_dir = run_dir_of(tmp_path, job_id)
    wait_for_training_step(local_slurm, job_id, output, run_dir, step=2)  # of 16
    local_slurm.signal_batch_shell(job_id, signal.SIGUSR1)

    job = local_slurm.wait(job_id, output, timeout=JOB_TIMEOUT_S)
    log = local_slurm.log(output)
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "1"), log[-4000:]
    # Each node's launcher took its machine rank from its own SLURM_NODEID, in both runs of the job.
    assert log.count("node node1: machine rank 0 of 2") == 2 and log.count("node node2: machine rank 1 of 2") == 2
    assert "2 node(s) x 1 process(es)" in log
    assert "stopping on SIGUSR1 after global step" in log
    assert f"requeueing job {job_id}" in log and f"job {job_id} restart 1:" in log
    train_log = (run_dir / "train.log").read_text()
    assert "resumed from" in train_log and "training completed after 4 epochs (global step 16)" in train_log

    # Same world size, same data order, bitwise-resumable state: nothing differs from the uninterrupted run.
    assert metrics_rows(run_dir) == metrics_rows(reference_dir)
    resumed, reference = (load_file(last_checkpoint(d) / "model.safetensors") for d in (run_dir, reference_dir))
    assert resumed.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(resumed[name], tensor), name
    resumed_ema, reference_ema = (torch.load(last_checkpoint(d) / "ema.pt", weights_only=True)["module"]
                                  for d in (run_dir, reference_dir))
    for name, tensor in reference_ema.items():
        assert torch.equal(resumed_ema[name], tensor), f"ema {name}"


def test_scancel_sigterm_checkpoints_and_ends_the_job(local_slurm, job_env, sample_dataset_dir, tmp_path):
    job_id, output = submit_training(local_slurm, job_env, sample_dataset_dir, tmp_path, ONE_NODE)
    run_dir = run_dir_of(tmp_path, job_id)
    wait_for_training_step(local_slurm, job_id, output, run_dir, step=2)
    local_slurm.command("scancel", str(job_id))  # SIGTERM to the batch shell and every process of the job

    job = local_slurm.wait(job_id, output, timeout=JOB_TIMEOUT_S)
    log = local_slurm.log(output)
    assert (job["JobState"], job["Restarts"]) == ("CANCELLED", "0"), log[-4000:]
    stopped = re.search(r"stopping on SIGTERM after global step (\d+)", log)
    assert stopped, log[-4000:]
    # The checkpoint of the step it stopped at, not only the last periodic one, is what a rerun resumes from.
    assert trainer_state(run_dir)["global_step"] == int(stopped[1]) < 16
    assert "requeueing" not in log
