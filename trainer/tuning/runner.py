"""``run_sweep(cfg)``: the whole hyper-parameter search behind ``trainer/sweep.py``."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from trainer.tuning import cluster
from trainer.tuning.launcher import remove_leftover_reports
from trainer.tuning.paths import SWEEP_CONFIG_FILE
from trainer.tuning.plots import plot_metric_vs_trial, plot_param_importances
from trainer.tuning.results import (
    RESULTS_FILE,
    TRIALS_FILE,
    best_trial,
    param_importances,
    summarize_result,
    write_best_config,
    write_results_yaml,
    write_trials_csv,
)
from trainer.tuning.resources import trial_resources
from trainer.tuning.space import parse_points, parse_search_space

logger = logging.getLogger(__name__)


class SweepFailed(RuntimeError):
    """Not a single trial produced the metric (the outputs are still written, listing every trial's status)."""


# The keys sweep.yaml adds to the training config; everything else is what each trial trains with.
SWEEP_ONLY_KEYS = ("sweep", "ray")
EPOCHS_KEY = "training.num_epochs"
METRIC_PLOT_FILE = "metric_vs_trial.png"
IMPORTANCE_PLOT_FILE = "param_importances.png"


def _sweep_settings(cfg: DictConfig, sweep_dir: Path) -> DictConfig:
    """A new sweep saves its resolved config; a resumed one reloads it, so trials keep training with exactly the
    config the sweep started with. Only ``ray.*`` (where to run) comes from the resuming command."""
    saved = sweep_dir / SWEEP_CONFIG_FILE
    if cfg.resume:
        if not saved.is_file():
            raise FileNotFoundError(f"resume=true: {saved} not found; is {sweep_dir} a sweep folder?")
        settings = OmegaConf.load(saved)
        settings.ray = OmegaConf.to_container(cfg.ray, resolve=True)
        logger.info("Resuming the sweep in %s with its saved config", sweep_dir)
        return settings
    settings = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(settings, saved)
    return settings


def run_sweep(cfg: DictConfig) -> dict:
    """Runs (or, with ``resume=true``, continues) the sweep in ``sweep.output_dir`` and writes its results.

    Returns the content of ``optimization_results.yaml``.
    """
    sweep_dir = Path(cfg.sweep.output_dir).resolve()
    settings = _sweep_settings(cfg, sweep_dir)
    sweep = settings.sweep
    base_config = {key: value for key, value in OmegaConf.to_container(settings).items() if key not in SWEEP_ONLY_KEYS}
    base = OmegaConf.create(base_config)
    space = parse_search_space(sweep.search_space, base)
    points = parse_points(sweep.points_to_evaluate, space)
    max_epochs = int(OmegaConf.select(base, EPOCHS_KEY))
    resources = trial_resources(sweep.resources_per_trial)
    logger.info("Sweep %s in %s: %d trials over %s; per trial %g CPUs, %g GPUs, %d training process(es)",
                sweep.name, sweep_dir, sweep.num_samples, ", ".join(space), resources.cpu, resources.gpu,
                resources.processes)

    cluster.prepare_environment(settings.ray)
    # Imported only now: Ray reads its bind settings, just prepared, when it is first imported.
    from trainer.tuning.tuner import build_trainable, build_tuner, restore_tuner, trial_statuses

    cluster.connect(settings.ray)
    try:
        trainable = build_trainable(base_config, sweep_dir, str(sweep.name), resources)
        if cfg.resume:
            tuner = restore_tuner(trainable, sweep_dir)
        else:
            tuner = build_tuner(trainable, space, points, OmegaConf.to_container(sweep), sweep_dir, max_epochs)
        result_grid = tuner.fit()
        statuses = trial_statuses(sweep_dir)
    finally:
        cluster.shutdown()
    for run_dir in (path for path in sweep_dir.iterdir() if path.is_dir()):
        remove_leftover_reports(run_dir)

    max_t = int(sweep.scheduler.get("max_t") or max_epochs)
    trials = [summarize_result(r, sweep.metric, sweep.mode, max_t, list(space), statuses.get(Path(r.path).name))
              for r in result_grid]
    return write_outputs(trials, space, settings, sweep_dir)


def write_outputs(trials, space, settings: DictConfig, sweep_dir: Path) -> dict:
    sweep = settings.sweep
    best = best_trial(trials, sweep.mode)
    importances = param_importances(trials, space, sweep.mode)
    write_trials_csv(trials, list(space), sweep.metric, sweep_dir / TRIALS_FILE)
    plot_metric_vs_trial(trials, sweep.metric, sweep.mode, sweep_dir / METRIC_PLOT_FILE)
    plot_param_importances(importances, sweep_dir / IMPORTANCE_PLOT_FILE)
    best_config_path = None
    if best is not None and sweep.best_config_dir:
        model_name = OmegaConf.select(settings, "model.name")
        best_config_path = Path(sweep.best_config_dir).resolve() / f"{model_name}.yaml"
        write_best_config(best.params, best_config_path,
                          f"Best of sweep {sweep_dir} ({sweep.metric} = {best.best_value:.6g}, {best.name}).\n"
                          f"Train with: python trainer/train.py model={model_name} "
                          f"optimization_results={model_name}")
    summary = write_results_yaml(sweep_dir / RESULTS_FILE, metric=sweep.metric, mode=sweep.mode, trials=trials,
                                 best=best, importances=importances, sweep_dir=sweep_dir,
                                 best_config_path=best_config_path)
    if best is None:
        raise SweepFailed(f"no trial reported {sweep.metric!r}; the trials' errors are in {sweep_dir}/*/error.txt "
                          f"and their logs in {sweep_dir}/*/train.log")
    logger.info("Best %s = %.6g (%s): %s", sweep.metric, best.best_value, best.name, best.params)
    return summary
