"""Real training processes killed, signalled, starved of disk and fed NaN losses. Nothing is lost beyond the last
checkpoint: a killed run resumed with ``resume=auto`` ends bitwise equal (model, EMA, momentum) to one that was
never interrupted, and no checkpoint is ever half-written.

Every run is the tiny setup of tests/integration/train_runs.py: 18 training images, global batch 4, 4 optimizer
steps per epoch, 2 epochs, a checkpoint after every step."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from fault_tools import REPO, fill_up, kill_tree, mounted_tmpfs
from train_runs import assert_ok, final_weights, last_state, run_training, train_command, train_env, wait_for_checkpoint

pytestmark = [pytest.mark.faults, pytest.mark.slow]

FAULT_LAUNCH = Path(__file__).with_name("fault_launch.py")
SETTINGS = ("dataset.augmentation=default", "training.checkpoint_every_steps=1", "training.lr_milestones=[1]",
            "logger=none")
TOTAL_STEPS = 8
TWO_PROCESSES = ("training.batch_size=2",)  # 2 x 2 = the same global batch of 4
GRACE_PERIOD_S = 60  # a stop signal must end the run (after a checkpoint) within this; a step takes < 1 s


def command(dataset_dir, run_dir, *extra, processes=1, launcher=None):
    cmd = train_command(dataset_dir, run_dir, *SETTINGS, *(TWO_PROCESSES if processes > 1 else ()), *extra,
                        processes=processes)
    if launcher is not None:  # the fault launcher instead of trainer/train.py, same overrides
        cmd[cmd.index(str(REPO / "trainer" / "train.py"))] = str(launcher)
    return cmd


def start(cmd, **env) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=train_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def assert_same_weights(run_dir: Path, reference: Path) -> None:
    got, expected = final_weights(run_dir), final_weights(reference)
    assert got.keys() == expected.keys()
    different = [name for name in expected if not torch.equal(got[name], expected[name])]
    assert not different, f"{len(different)} of {len(expected)} tensors differ, e.g. {different[:3]}"


def assert_checkpoints_complete(run_dir: Path) -> list[Path]:
    """Every checkpoint directory (``.tmp-*`` saves in progress aside) is complete and loadable, and ``last`` points
    at one of them."""
    root = run_dir / "checkpoints"
    complete = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".tmp-")]
    assert complete, f"no checkpoint in {root}"
    for checkpoint in complete:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        weights = load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point()), checkpoint
        for name in ("optimizer.bin", "ema.pt", "lr_scheduler.pt"):
            torch.load(checkpoint / name, weights_only=True)
        assert state["global_step"] <= TOTAL_STEPS
    assert (root / "last").resolve() in [p.resolve() for p in complete]
    return complete


@pytest.fixture(scope="module")
def reference(sample_dataset_dir, tmp_path_factory):
    """Uninterrupted runs, one per process count."""
    runs = {}
    for processes in (1, 2):
        run_dir = tmp_path_factory.mktemp(f"reference_{processes}")
        assert_ok(run_training(command(sample_dataset_dir, run_dir, processes=processes), timeout=300))
        runs[processes] = run_dir
    return runs


@pytest.mark.parametrize("processes,seed", [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1)],
                         ids=["1process-seed0", "1process-seed1", "1process-seed2", "2processes-seed0",
                              "2processes-seed1"])
def test_sigkill_at_a_random_moment_then_resume_matches_uninterrupted(sample_dataset_dir, tmp_path, reference,
                                                                      processes, seed):
    rng = random.Random(seed)
    kill_after_step = rng.randint(1, TOTAL_STEPS - 1)
    # Fault timing, not synchronisation: the kill lands somewhere inside the following step or checkpoint write.
    extra_delay = rng.uniform(0.0, 0.5)
    cmd = command(sample_dataset_dir, tmp_path, processes=processes)
    process = start(cmd)
    try:
        wait_for_checkpoint(process, tmp_path, lambda s: s["global_step"] >= kill_after_step, timeout=240)
        time.sleep(extra_delay)
    finally:
        kill_tree(process, signal.SIGKILL)
    killed_at = last_state(tmp_path)["global_step"]
    assert_checkpoints_complete(tmp_path)

    result = run_training(cmd, timeout=300)
    assert_ok(result)
    if killed_at < TOTAL_STEPS:
        assert "resumed from" in (tmp_path / "train.log").read_text()
    assert_same_weights(tmp_path, reference[processes])
    assert_checkpoints_complete(tmp_path)


@pytest.mark.parametrize("processes", [1, 2], ids=["1process", "2processes"])
def test_kill_during_a_checkpoint_write_keeps_the_previous_one(sample_dataset_dir, tmp_path, reference, processes):
    cmd = command(sample_dataset_dir, tmp_path, processes=processes, launcher=FAULT_LAUNCH)
    result = subprocess.run(cmd, cwd=REPO, env=train_env(FAULT_KILL_IN_CHECKPOINT_WRITE="3"), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0
    root = tmp_path / "checkpoints"
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == [".tmp-epoch0000-step000003"], sorted(p.name for p in root.iterdir())
    assert last_state(tmp_path)["global_step"] == 2  # the previous checkpoint, complete
    assert_checkpoints_complete(tmp_path)

    assert_ok(run_training(command(sample_dataset_dir, tmp_path, processes=processes), timeout=300))
    assert "epoch 1, step 2 of 4" in (tmp_path / "train.log").read_text()
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]  # the next save cleaned it up
    assert_same_weights(tmp_path, reference[processes])


# One process with 2 data-loader workers: the signal reaches the workers too, which must survive it. Two processes:
# torchrun gets it and forwards it to the ranks (each in its own session).
@pytest.mark.parametrize("sig,processes,workers", [
    pytest.param(signal.SIGUSR1, 1, 2, id="SIGUSR1-1process-2workers"),
    pytest.param(signal.SIGTERM, 2, 0, id="SIGTERM-2processes"),
])
def test_stop_signal_checkpoints_and_exits_within_the_grace_period(sample_dataset_dir, tmp_path, reference, sig,
                                                                   processes, workers):
    cmd = command(sample_dataset_dir, tmp_path, f"training.num_workers={workers}", processes=processes)
    process = start(cmd)
    try:
        before = wait_for_checkpoint(process, tmp_path, lambda s: s["global_step"] >= 3, timeout=240)
        signalled = time.monotonic()
        os.killpg(process.pid, sig)  # the launcher's whole process group, as a terminal or a job scheduler does
        output, _ = process.communicate(timeout=GRACE_PERIOD_S)
        took = time.monotonic() - signalled
    finally:
        kill_tree(process)
    if last_state(tmp_path)["finished"]:
        pytest.fail(f"the run finished before the signal arrived; lower the step at which to signal:\n{output[-2000:]}")
    # One process: train.py's own code. Under torchrun the launcher reports a failed worker with 1.
    assert process.returncode == (75 if processes == 1 else 1), output[-3000:]
    assert took < GRACE_PERIOD_S
    after = last_state(tmp_path)
    assert after["global_step"] >= before["global_step"] and after["finished"] is None
    assert f"stopping on {sig.name}" in (tmp_path / "train.log").read_text()
    assert_checkpoints_complete(tmp_path)
    assert_ok(run_training(cmd, timeout=300))
    assert_same_weights(tmp_path, reference[processes])


def test_one_nonfinite_loss_is_skipped_and_counted(sample_dataset_dir, tmp_path):
    cmd = command(sample_dataset_dir, tmp_path, launcher=FAULT_LAUNCH)
    result = subprocess.run(cmd, cwd=REPO, env=train_env(FAULT_NONFINITE_STEPS="3"), capture_output=True, text=True,
                            timeout=300)
    assert_ok(result)
    log = (tmp_path / "train.log").read_text()
    assert log.count("non-finite loss or gradient") == 1 and "step skipped (1 in a row, 1 in total)" in log
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    skipped = [row.split(",")[header.index("nonfinite_steps_skipped")] for row in rows[1:]]
    assert skipped == ["1", "1"]
    assert last_state(tmp_path)["global_step"] == TOTAL_STEPS and last_state(tmp_path)["nonfinite_total"] == 1
    assert_checkpoints_complete(tmp_path)


def test_repeated_nonfinite_loss_stops_cleanly_with_the_last_good_checkpoint(sample_dataset_dir, tmp_path):
    cmd = command(sample_dataset_dir, tmp_path, "training.max_consecutive_nonfinite=3", launcher=FAULT_LAUNCH)
    result = subprocess.run(cmd, cwd=REPO, env=train_env(FAULT_NONFINITE_STEPS="3,4,5,6,7,8"), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    log = (tmp_path / "train.log").read_text()
    assert "non-finite for 3 consecutive optimizer steps" in log and "The last good checkpoint is" in log
    state = last_state(tmp_path)
    assert state["nonfinite_total"] <= 3 and state["global_step"] <= 5
    complete = assert_checkpoints_complete(tmp_path)  # finite weights and statistics, loadable
    # The skipped steps changed no parameter: every checkpoint left holds the parameters of step 2.
    parameters = [{k: v for k, v in load_file(c / "model.safetensors").items()
                   if "running_" not in k and "num_batches_tracked" not in k} for c in complete]
    for other in parameters[1:]:
        assert all(torch.equal(other[k], parameters[0][k]) for k in parameters[0])


def test_disk_full_during_a_checkpoint_is_a_clear_error_and_keeps_the_previous_one(sample_dataset_dir, tmp_path,
                                                                                   reference):
    """On a real, small tmpfs where the machine allows mounting one (root); otherwise ENOSPC injected mid-file."""
    with mounted_tmpfs(tmp_path / "small_fs", size_mb=48) as filesystem:
        run_dir = (filesystem or tmp_path) / "run"
        cmd = command(sample_dataset_dir, run_dir, launcher=None if filesystem else FAULT_LAUNCH)
        process = start(cmd, **({} if filesystem else {"FAULT_ENOSPC_IN_CHECKPOINT_WRITE": "3"}))
        try:
            if filesystem is not None:
                wait_for_checkpoint(process, run_dir, lambda s: s["global_step"] >= 2, timeout=240)
                os.killpg(process.pid, signal.SIGSTOP)  # paused while the disk fills up
                fill_up(filesystem, leave_bytes=64 * 1024)  # the next checkpoint (~1 MB) cannot fit
                os.killpg(process.pid, signal.SIGCONT)
            output, _ = process.communicate(timeout=240)
        finally:
            kill_tree(process)
        assert process.returncode not in (0, 75), output[-3000:]
        assert "could not write checkpoint" in output and "No space left on device" in output, output[-3000:]
        assert "The previous checkpoint is intact" in output
        before = last_state(run_dir)["global_step"]
        assert before >= 2
        assert_checkpoints_complete(run_dir)
        if filesystem is not None:
            (filesystem / "filler").unlink()  # space again: the run resumes from the intact checkpoint
        assert_ok(run_training(command(sample_dataset_dir, run_dir), timeout=300))
        assert_same_weights(run_dir, reference[1])


def test_image_deleted_during_training_stops_with_its_name_and_no_hang(sample_dataset_dir, tmp_path):
    """With data-loader workers (which ignore SIGTERM): the error names the file, the process exits within seconds
    instead of waiting forever for its workers at exit, and no worker outlives it."""
    data = tmp_path / "data_copy"
    shutil.copytree(sample_dataset_dir, data)
    victim = data / json.loads((data / "train.jsonl").read_text().splitlines()[0])["image_path"]
    run_dir = tmp_path / "run"
    process = start(command(data, run_dir, "training.num_workers=2"))
    try:
        wait_for_checkpoint(process, run_dir, lambda s: s["global_step"] >= 1, timeout=240)
        os.killpg(process.pid, signal.SIGSTOP)  # paused while the file disappears
        victim.unlink()
        os.killpg(process.pid, signal.SIGCONT)
        output, _ = process.communicate(timeout=120)  # a hang at exit fails here
    finally:
        kill_tree(process)
    assert process.returncode not in (0, 75)
    assert f"cannot read image {victim}: No such file or directory" in output, output[-3000:]
    assert_checkpoints_complete(run_dir)
    left = [p for p in psutil.process_iter(["cmdline"]) if str(run_dir) in " ".join(p.info["cmdline"] or [])]
    assert not left, f"processes of the failed run still alive: {[p.pid for p in left]}"
