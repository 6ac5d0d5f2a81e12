"""slurm/sweep.sbatch on the real local SLURM: a Ray head and a Ray worker on the allocation's two nodes, a tiny
sweep against that cluster, and both Ray nodes stopped after it."""
from __future__ import annotations

import re
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NUM_TRIALS = 2
# Two trials of a small custom_detector for 2 epochs, one at a time (1 CPU per node, 1 per trial).
SWEEP_OVERRIDES = ["model=custom_detector", "model.min_size=96", "model.max_size=128", "model.base_channels=8",
                   "model.fpn_channels=16", "training.num_workers=0", "training.warmup_iters=3",
                   "training.batch_size=4", "training.eval_batch_size=6", "training.num_epochs=2", "logger=none",
                   f"sweep.num_samples={NUM_TRIALS}", "sweep.max_concurrent_trials=1",
                   "sweep.resources_per_trial.cpu=1", f"sweep.n_startup_trials={NUM_TRIALS}",
                   "sweep.scheduler.grace_period=1", "sweep.verbose=0"]
SBATCH_OPTIONS = ["--gres=none", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--time=00:10:00"]
JOB_TIMEOUT_S = 300


def ray_processes_using(port: int) -> list[str]:
    """Command lines of live processes that belong to the Ray cluster listening on PORT."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "ray" in cmdline and f":{port}" in cmdline:
            found.append(cmdline)
    return found


def test_sweep_job_runs_a_tiny_sweep_on_a_ray_cluster_and_stops_it(local_slurm, job_env, sample_dataset_dir,
                                                                   tmp_path):
    data = [f"dataset.train_jsonl={sample_dataset_dir / 'train.jsonl'}",
            f"dataset.val_jsonl={sample_dataset_dir / 'val.jsonl'}", f"dataset.train_data_dir={sample_dataset_dir}"]
    sweep_dir = tmp_path / "sweep"
    output = tmp_path / "job.out"
    job_id = local_slurm.submit(
        "slurm/sweep.sbatch", *SWEEP_OVERRIDES, *data, f"sweep.output_dir={sweep_dir}",
        f"sweep.best_config_dir={tmp_path / 'best'}",
        options=SBATCH_OPTIONS, env={**job_env, "RAY_START_TIMEOUT_S": "120"}, output=output)

    job = local_slurm.wait(job_id, output, timeout=JOB_TIMEOUT_S)
    log = local_slurm.log(output)
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), log[-5000:]

    # The sweep joined the cluster the job started rather than starting its own Ray.
    address = re.search(r"Ray head on node1 \(([\d.]+):(\d+)\)", log)
    assert address, log[-3000:]
    assert "Ray cluster up: 2 node(s)" in log
    assert f"Joining the Ray cluster at {address[1]}:{address[2]}" in log

    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["num_trials"] == NUM_TRIALS and results["num_errored"] == 0
    assert 0.0 <= results["best_value"] <= 1.0
    assert Path(results["best_checkpoint"]).is_file()
    assert (tmp_path / "best" / "custom_detector.yaml").is_file()

    # Ray was stopped by the job: nothing of that cluster is left running.
    assert log.index("sweep.sbatch: stopping Ray") < log.index("sweep.sbatch: Ray stopped")
    assert log.count("Local node finished draining; shutting down") == 2  # worker, then head
    assert ray_processes_using(int(address[2])) == []
