"""End-to-end sweeps: ``trainer/sweep.py`` on a local Ray with 2 CPUs, training custom_detector on the sample data.

The killed-driver test also checks that the local Ray listens on the loopback interface only (ray.host default).

Each test starts the driver as a real process in its own ``RaySandbox`` and checks that no Ray process outlives it.
"""
from __future__ import annotations

import csv
import ipaddress
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml
from hydra import compose, initialize_config_dir

from sweep_runs import LOCAL_RAY, REPO, TINY, RaySandbox, data_args, ray_sandbox, run, sweep_command  # noqa: F401 (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The test search space (sweep.yaml's, narrowed by TINY) plus model.score_thresh: a trial with score_thresh=1.0
# keeps no detection, so its mAP is exactly 0 and ASHA must stop it at the first rung.
BOUNDS = {"training.learning_rate": (0.005, 0.05), "training.weight_decay": (1e-6, 1e-3),
          "training.backbone_lr_factor": (0.05, 1.0), "training.warmup_iters": (0, 4),
          "model.loss_weights.classification": (0.5, 2.0), "model.loss_weights.bbox_regression": (0.5, 2.0),
          "model.loss_weights.bbox_ctrness": (0.5, 2.0), "model.score_thresh": (0.05, 1.0)}
SCORE_THRESH_CHOICE = "+sweep.search_space.model.score_thresh={distribution:choice,values:[0.05,1.0]}"
GOOD_POINT = ("training:{learning_rate:0.02,weight_decay:1e-4,backbone_lr_factor:0.5,warmup_iters:2},"
              "model:{loss_weights:{classification:1.0,bbox_regression:1.0,bbox_ctrness:1.0},score_thresh:%s}")


def _sweep_dirs(root: Path) -> list[Path]:
    return sorted(path for path in root.glob("*/*") if path.is_dir())


def _trials(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "trials.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _assert_inside_space(params: dict) -> None:
    assert set(params) == set(BOUNDS)
    for key, value in params.items():
        low, high = BOUNDS[key]
        assert low <= float(value) <= high, f"{key}={value} outside [{low}, {high}]"


def test_small_sweep_writes_every_output_and_asha_stops_a_trial(sample_dataset_dir, tmp_path, ray_sandbox):
    root, best_dir = tmp_path / "multirun", tmp_path / "optimization_results"
    points = f"sweep.points_to_evaluate=[{{{GOOD_POINT % '0.05'}}},{{{GOOD_POINT % '1.0'}}}]"
    command = sweep_command(*TINY, *LOCAL_RAY, *data_args(sample_dataset_dir), f"sweep.root={root}",
                            f"sweep.best_config_dir={best_dir}", "sweep.num_samples=4",
                            "sweep.scheduler.grace_period=1", "sweep.scheduler.reduction_factor=2",
                            SCORE_THRESH_CHOICE, points)
    result = run(command, ray_sandbox.env, timeout=400)
    assert result.returncode == 0, result.stdout[-6000:]

    [sweep_dir] = _sweep_dirs(root)
    assert time.strptime(str(sweep_dir.relative_to(root)), "%Y-%m-%d/%H-%M-%S")
    for name in ("sweep.log", ".hydra/config.yaml", "sweep_config.yaml"):
        assert (sweep_dir / name).is_file(), name
    for plot in ("metric_vs_trial.png", "param_importances.png"):
        assert (sweep_dir / plot).read_bytes().startswith(PNG_MAGIC), plot

    trials = _trials(sweep_dir)
    assert [int(t["trial"]) for t in trials] == [1, 2, 3, 4]
    for trial in trials:
        run_dir = Path(trial["run_dir"])
        assert run_dir.parent == sweep_dir and run_dir.name == trial["name"]
        for name in ("train.log", "metrics.csv", "classes.json", ".hydra/config.yaml"):
            assert (run_dir / name).is_file(), f"{trial['name']}: {name}"
        assert (run_dir / "tensorboard").is_dir() and any(run_dir.glob("checkpoint_*"))
        with open(run_dir / "metrics.csv", newline="") as handle:
            assert len(list(csv.DictReader(handle))) == int(trial["epochs"])
        # The trial really trained with its sampled parameters.
        trained = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
        assert trained["training"]["learning_rate"] == pytest.approx(float(trial["training.learning_rate"]))
        assert trained["model"]["score_thresh"] == pytest.approx(float(trial["model.score_thresh"]))
        _assert_inside_space({key: trial[key] for key in BOUNDS})

    # points_to_evaluate ran first; the score_thresh=1.0 trial scored 0 at the first rung and ASHA stopped it.
    assert float(trials[0]["model.score_thresh"]) == 0.05 and float(trials[0]["mAP"]) > 0
    assert float(trials[1]["model.score_thresh"]) == 1.0
    assert (trials[1]["status"], trials[1]["epochs"], float(trials[1]["mAP"])) == ("stopped_early", "1", 0.0)

    summary = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert summary["metric"] == "mAP" and summary["mode"] == "max" and summary["num_trials"] == 4
    assert summary["num_stopped_early"] >= 1 and summary["num_errored"] == 0
    best = max(trials, key=lambda t: float(t["mAP"]))
    assert summary["best_value"] == pytest.approx(float(best["mAP"]))
    assert summary["best_trial"] == best["name"] and summary["best_run_dir"] == best["run_dir"]
    assert Path(summary["best_checkpoint"]).is_file()
    _assert_inside_space(summary["best_params"])
    assert set(summary["param_importances"]) <= set(BOUNDS)
    assert all(value >= 0 for value in summary["param_importances"].values())

    # The best parameters, as a config train.py picks up with optimization_results=custom_detector.
    best_config = best_dir / "custom_detector.yaml"
    assert summary["best_config"] == str(best_config)
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose("train", overrides=["model=custom_detector", "optimization_results=custom_detector",
                                          f"hydra.searchpath=[file://{tmp_path}]"])
    for key, value in summary["best_params"].items():
        section, *rest = key.split(".")
        node = cfg[section]
        for part in rest:
            node = node[part]
        assert node == pytest.approx(value), key


def _finished_trials(sweep_dir: Path) -> set[str]:
    """Trials the driver has recorded as TERMINATED in its experiment state (what a resume will skip)."""
    finished = set()
    for state_file in sweep_dir.glob("experiment_state-*.json"):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError):  # being rewritten right now: look again next time
            continue
        for trial_json, _ in state["trial_data"]:
            trial = json.loads(trial_json)
            if trial["status"] == "TERMINATED":
                finished.add(trial["custom_dirname"])
    return finished


def _listening_addresses(sandbox: RaySandbox) -> set[str]:
    """Every address a process of the sweep's local Ray listens on (IPv4-mapped IPv6 shown as IPv4)."""
    addresses = set()
    for process in sandbox.processes():
        try:
            connections = process.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        addresses |= {c.laddr.ip.removeprefix("::ffff:") for c in connections if c.status == psutil.CONN_LISTEN}
    return addresses


def _trial_files(trial_dir: Path) -> dict[str, bytes]:
    return {name: (trial_dir / name).read_bytes() for name in ("train.log", "metrics.csv", "result.json")}


def test_killed_driver_resumes_without_repeating_finished_trials(sample_dataset_dir, tmp_path, ray_sandbox):
    root = tmp_path / "multirun"
    command = sweep_command(*TINY, *LOCAL_RAY, *data_args(sample_dataset_dir), f"sweep.root={root}",
                            f"sweep.best_config_dir={tmp_path / 'best'}", "sweep.num_samples=3")
    driver = subprocess.Popen(command, cwd=REPO, env=ray_sandbox.env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        finished: set[str] = set()
        while not finished and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            finished = set().union(*(_finished_trials(d) for d in _sweep_dirs(root))) if root.exists() else set()
        assert driver.poll() is None, "the sweep ended before the test could kill it"
        assert finished, "no trial finished within 300 s"
        listening = _listening_addresses(ray_sandbox)
        assert listening and all(ipaddress.ip_address(ip).is_loopback for ip in listening), listening
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
    ray_sandbox.wait_until_gone(timeout=30)  # Ray's own reaper stops the killed driver's local cluster

    [sweep_dir] = _sweep_dirs(root)
    before = {name: _trial_files(sweep_dir / name) for name in finished}
    assert not (sweep_dir / "optimization_results.yaml").exists()

    resumed = run(sweep_command("resume=true", f"sweep.root={root}", *LOCAL_RAY), ray_sandbox.env, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-6000:]

    assert _sweep_dirs(root) == [sweep_dir], "the resume must continue the same sweep folder"
    trials = _trials(sweep_dir)
    assert len(trials) == 3 and len({t["name"] for t in trials}) == 3
    assert sorted(p.name for p in sweep_dir.glob("trial_*")) == sorted(t["name"] for t in trials)
    assert {t["status"] for t in trials} <= {"completed", "stopped_early"}
    for name, files in before.items():
        assert _trial_files(sweep_dir / name) == files, f"{name} finished before the kill but ran again"
    summary = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert summary["num_trials"] == 3 and not math.isnan(summary["best_value"])
