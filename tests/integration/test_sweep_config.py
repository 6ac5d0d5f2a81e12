"""The sweep's pieces that need no Ray: search space, points, output folders, results files and the config."""
from __future__ import annotations

import csv
import re
from pathlib import Path
from types import SimpleNamespace

import optuna.distributions as od
import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from trainer.tuning import paths, run_sweep
from trainer.tuning.resources import TrialResources, trial_resources
from trainer.tuning.results import (TrialSummary, best_trial, param_importances, summarize_result,
                                    write_best_config, write_trials_csv)
from trainer.tuning.space import (SweepConfigError, apply_params, contains, flatten_params, params_to_overrides,
                                  parse_points, parse_search_space)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _compose(name: str, overrides: list[str] = (), **kwargs):
    paths.register_resolver()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(name, overrides=list(overrides), **kwargs)


def test_default_sweep_space_matches_the_training_config_of_every_model():
    for model in ("faster_rcnn", "custom_detector", "retinanet"):
        cfg = _compose("sweep", [f"model={model}"])
        base = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("sweep", "ray")])
        space = parse_search_space(cfg.sweep.search_space, base)
        loss_keys = {f"model.loss_weights.{name}" for name in cfg.model.loss_weights}
        assert set(space) == {"training.learning_rate", "training.weight_decay", "training.backbone_lr_factor",
                              "training.warmup_iters"} | loss_keys
        assert space["training.learning_rate"] == od.FloatDistribution(1e-3, 1e-1, log=True)
        assert space["training.warmup_iters"] == od.IntDistribution(0, 1000)
    assert cfg.sweep.num_samples == 30 and cfg.sweep.metric == "mAP" and cfg.sweep.mode == "max"
    assert cfg.ray.host == "127.0.0.1"


def test_sweep_runs_in_a_timestamped_multirun_folder_that_is_also_hydras():
    cfg = _compose("sweep", return_hydra_config=True)
    output_dir = cfg.sweep.output_dir
    assert output_dir.startswith("multirun/") and len(Path(output_dir).relative_to("multirun").parts) == 2
    assert cfg.hydra.run.dir == output_dir


def test_search_space_distributions_and_wildcards():
    base = OmegaConf.create({"a": {"lr": 0.1, "n": 2, "kind": "x"}, "w": {"cls": 1.0, "box": 1.0}})
    space = parse_search_space({"a": {"lr": {"distribution": "loguniform", "low": 1e-4, "high": 1e-1},
                                      "n": {"distribution": "int", "low": 1, "high": 3},
                                      "kind": {"distribution": "choice", "values": ["x", "y"]}},
                                "w": {"*": {"distribution": "uniform", "low": 0.5, "high": 2}}}, base)
    assert space == {"a.lr": od.FloatDistribution(1e-4, 1e-1, log=True), "a.n": od.IntDistribution(1, 3),
                     "a.kind": od.CategoricalDistribution(("x", "y")),
                     "w.cls": od.FloatDistribution(0.5, 2.0), "w.box": od.FloatDistribution(0.5, 2.0)}
    assert contains(space["a.n"], 3) and not contains(space["a.n"], 2.5) and not contains(space["a.lr"], 0.2)
    tuned = apply_params(base, {"a.lr": 0.01, "w.box": 1.5})
    assert (tuned.a.lr, tuned.w.box, base.a.lr) == (0.01, 1.5, 0.1)


@pytest.mark.parametrize("leaf, message", [
    ({"distribution": "normal", "low": 0, "high": 1}, "unknown distribution 'normal'"),
    ({"distribution": "uniform", "low": 1, "high": 1}, "low (1) must be below high (1)"),
    ({"distribution": "loguniform", "low": 0, "high": 1}, "needs low > 0"),
    ({"distribution": "int", "low": 0.5, "high": 3}, "bounds must be integers"),
    ({"distribution": "uniform", "high": 3}, "needs low"),
    ({"distribution": "choice", "values": []}, "non-empty list"),
])
def test_bad_search_space_entries_name_the_key(leaf, message):
    with pytest.raises(SweepConfigError, match=rf"sweep\.search_space\.a\.lr: .*{re.escape(message)}"):
        parse_search_space({"a": {"lr": leaf}})


def test_search_space_keys_must_exist_in_the_training_config():
    base = OmegaConf.create({"training": {"learning_rate": 0.1}})
    with pytest.raises(SweepConfigError, match="does not have: training.lr"):
        parse_search_space({"training": {"lr": {"distribution": "uniform", "low": 0, "high": 1}}}, base)
    with pytest.raises(SweepConfigError, match="no mapping 'model.loss_weights'"):
        parse_search_space({"model": {"loss_weights": {"*": {"distribution": "uniform", "low": 0, "high": 1}}}},
                           base)


def test_points_to_evaluate_are_flattened_and_checked():
    space = {"a.lr": od.FloatDistribution(1e-4, 1e-1, log=True), "a.n": od.IntDistribution(1, 3)}
    assert parse_points([{"a": {"lr": 0.01}}, {"a.n": 2}], space) == [{"a.lr": 0.01}, {"a.n": 2}]
    with pytest.raises(SweepConfigError, match=r"points_to_evaluate\[0\]\.a\.lr: 0\.5 lies outside"):
        parse_points([{"a": {"lr": 0.5}}], space)
    with pytest.raises(SweepConfigError, match=r"points_to_evaluate\[1\]\.b: not a parameter"):
        parse_points([{}, {"b": 1}], space)
    assert flatten_params(params_to_overrides({"a.lr": 0.01, "a.n": 2, "b": 1})) == {"a.lr": 0.01, "a.n": 2, "b": 1}


def test_resume_finds_the_newest_sweep(tmp_path):
    assert paths.latest_sweep(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="holds no sweep"):
        paths.resolve_sweep_dir(str(tmp_path), resume=True)
    for stamp in ("2026-01-02/10-00-00", "2026-01-10/09-00-00", "2026-01-05/23-59-59"):
        (tmp_path / stamp).mkdir(parents=True)
        (tmp_path / stamp / paths.SWEEP_CONFIG_FILE).write_text("{}")
    (tmp_path / "2026-02-01" / "00-00-00").mkdir(parents=True)  # a folder without a sweep in it
    assert paths.resolve_sweep_dir(str(tmp_path), resume=True) == str(tmp_path / "2026-01-10" / "09-00-00")
    assert Path(paths.resolve_sweep_dir(str(tmp_path), resume=False)).parent.parent == tmp_path


def _trial(number: int, value: float | None, lr: float, wd: float, status: str = "completed") -> TrialSummary:
    return TrialSummary(number=number, name=f"trial_{number:03d}_x", status=status, epochs=2, best_value=value,
                        last_value=value, params={"lr": lr, "wd": wd}, run_dir=f"/runs/trial_{number:03d}_x")


def test_best_trial_importances_and_trials_csv(tmp_path):
    space = {"lr": od.FloatDistribution(1e-4, 1e-1, log=True), "wd": od.FloatDistribution(0.0, 1.0)}
    # The value is a function of lr alone; wd is noise.
    trials = [_trial(i + 1, -abs(i - 10) / 10, lr=10 ** (-4 + 3 * i / 19), wd=(i * 7 % 20) / 20) for i in range(20)]
    trials.append(_trial(21, None, lr=0.01, wd=0.5, status="error"))
    assert best_trial(trials, "max").number == 11
    assert best_trial(trials, "min").best_value == -1.0
    importances = param_importances(trials, space, "max")
    assert set(importances) == {"lr", "wd"} and importances["lr"] > importances["wd"]
    assert sum(importances.values()) == pytest.approx(1.0)
    assert param_importances(trials[:1], space, "max") == {}

    write_trials_csv(trials, ["lr", "wd"], "mAP", tmp_path / "trials.csv")
    with open(tmp_path / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["trial"]) for r in rows] == list(range(1, 22))
    assert rows[-1]["status"] == "error" and rows[-1]["mAP"] == ""
    assert float(rows[10]["mAP"]) == 0.0 and float(rows[10]["lr"]) == pytest.approx(trials[10].params["lr"])


def test_best_config_is_picked_up_by_train_yaml(tmp_path):
    best = {"training.learning_rate": 0.0123, "model.loss_weights.classification": 1.7}
    target = tmp_path / "optimization_results" / "custom_detector.yaml"
    write_best_config(best, target, "from a test")
    assert yaml.safe_load(target.read_text()) == params_to_overrides(best)
    cfg = _compose("train", ["model=custom_detector", "optimization_results=custom_detector",
                             f"hydra.searchpath=[file://{tmp_path}]", "training.weight_decay=0.5"])
    assert cfg.training.learning_rate == 0.0123 and cfg.model.loss_weights.classification == 1.7
    assert cfg.training.weight_decay == 0.5  # command-line overrides still win


@pytest.mark.parametrize("tune_status, error, epochs, expected", [
    ("TERMINATED", None, 3, "completed"), ("TERMINATED", None, 1, "stopped_early"),
    ("ERROR", RuntimeError("boom"), 1, "error"), ("RUNNING", None, 2, "unfinished"),
])
def test_trial_status_and_best_epoch_from_a_tune_result(tune_status, error, epochs, expected):
    history = pd.DataFrame({"mAP": [0.2, 0.5, 0.4][:epochs], "training_iteration": list(range(1, epochs + 1))})
    result = SimpleNamespace(path="/sweep/trial_007_ab12cd34", metrics_dataframe=history, error=error,
                             metrics={"training_iteration": epochs}, config={"lr": 0.01, "unrelated": 1})
    summary = summarize_result(result, "mAP", "max", max_epochs=3, param_names=["lr"], tune_status=tune_status)
    assert (summary.number, summary.name, summary.status, summary.epochs) == (7, "trial_007_ab12cd34", expected,
                                                                              epochs)
    assert summary.best_value == max(history["mAP"]) and summary.last_value == history["mAP"].iloc[-1]
    assert summary.params == {"lr": 0.01}
    assert summarize_result(result, "mAP", "min", 3, ["lr"], tune_status).best_value == min(history["mAP"])


@pytest.mark.parametrize("settings, expected", [
    ({"cpu": 2, "gpu": 0, "processes": None}, TrialResources(cpu=2.0, gpu=0.0, processes=1)),
    ({"cpu": 2, "gpu": 0, "processes": 2}, TrialResources(cpu=2.0, gpu=0.0, processes=2)),  # 2 gloo processes
    ({"cpu": 8, "gpu": 4, "processes": None}, TrialResources(cpu=8.0, gpu=4.0, processes=4)),
    ({"cpu": 8, "gpu": 4.0, "processes": 4}, TrialResources(cpu=8.0, gpu=4.0, processes=4)),
    ({"cpu": 1, "gpu": 0.5, "processes": None}, TrialResources(cpu=1.0, gpu=0.5, processes=1)),
    ({"cpu": 2, "gpu": 1}, TrialResources(cpu=2.0, gpu=1.0, processes=1)),  # a sweep saved before `processes`
])
def test_resources_per_trial_default_to_one_process_per_gpu(settings, expected):
    resources = trial_resources(settings)
    assert resources == expected
    assert resources.ray_request() == {"cpu": expected.cpu, "gpu": expected.gpu}


@pytest.mark.parametrize("settings, message", [
    ({"cpu": 2, "gpu": 0, "processes": 0}, "processes must be a whole number >= 1"),
    ({"cpu": 2, "gpu": 0, "processes": 1.5}, "processes must be a whole number >= 1"),
    ({"cpu": 2, "gpu": 0, "processes": True}, "processes must be a whole number >= 1"),
    ({"cpu": 2, "gpu": 2.5, "processes": None}, "gpu=2.5: more than one GPU per trial must be a whole number"),
    ({"cpu": 2, "gpu": 4, "processes": 2}, "processes=2 with gpu=4: one process drives one GPU"),
    ({"cpu": 2, "gpu": 1, "processes": 2}, "processes=2 with gpu=1: one process drives one GPU"),
    ({"cpu": 2, "gpu": 0.5, "processes": 2}, "gpu=0.5 shares one GPU: it takes processes=1"),
    ({"cpu": 2, "gpu": -1}, "gpu must be a number >= 0"),
    ({"cpu": "two", "gpu": 0}, "cpu must be a number >= 0"),
])
def test_bad_resources_per_trial_name_the_key(settings, message):
    with pytest.raises(SweepConfigError, match=rf"sweep\.resources_per_trial\..*{re.escape(message)}"):
        trial_resources(settings)


def test_sweep_yaml_resources_are_valid_and_a_bad_one_stops_the_sweep(tmp_path):
    cfg = _compose("sweep", ["model=custom_detector"])
    assert trial_resources(cfg.sweep.resources_per_trial) == TrialResources(cpu=2.0, gpu=0.0, processes=1)
    cfg = _compose("sweep", ["model=custom_detector", f"sweep.output_dir={tmp_path / 'sweep'}",
                             "sweep.resources_per_trial.gpu=2", "sweep.resources_per_trial.processes=3"])
    with pytest.raises(SweepConfigError, match="processes=3 with gpu=2"):
        run_sweep(cfg)
