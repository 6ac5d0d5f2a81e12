"""Building (or restoring) the Tune experiment: OptunaSearch with a seeded TPE sampler, ASHA on the per-epoch
validation metric, per-trial resources, retries and checkpoints."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import optuna
import optuna.distributions as od
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from trainer.tuning.resources import TrialResources
from trainer.tuning.trainable import run_trial, trial_dirname


def build_trainable(base_config: dict, sweep_dir: Path, sweep_name: str, resources: TrialResources):
    """``run_trial`` bound to this sweep, asking Ray for ``resources`` (CPUs, GPUs) per trial."""
    bound = tune.with_parameters(run_trial, base_config=base_config, sweep_dir=str(sweep_dir),
                                 working_dir=os.getcwd(), sweep_name=sweep_name, processes=resources.processes)
    return tune.with_resources(bound, resources.ray_request())


def build_tuner(trainable, space: Mapping[str, od.BaseDistribution], points: list[dict], sweep: Mapping,
                sweep_dir: Path, max_epochs: int) -> tune.Tuner:
    """A new experiment stored in ``sweep_dir``; ``points`` (dotted-key params) are tried first, in order."""
    scheduler_cfg = sweep["scheduler"]
    searcher = OptunaSearch(
        space=dict(space),
        metric=sweep["metric"],  # a searcher built with its space takes metric/mode only here
        mode=sweep["mode"],
        sampler=optuna.samplers.TPESampler(seed=int(sweep["seed"]), n_startup_trials=int(sweep["n_startup_trials"])),
        points_to_evaluate=points or None,
    )
    scheduler = ASHAScheduler(
        time_attr="training_iteration",  # one Tune iteration = one validation = one epoch
        # Left null, one past the last epoch: a trial that trains to the end returns by itself (its curves, logs
        # and W&B run are finished) instead of being stopped at max_t, which kills its Ray worker at once.
        max_t=int(scheduler_cfg.get("max_t") or max_epochs + 1),
        grace_period=int(scheduler_cfg["grace_period"]),
        reduction_factor=float(scheduler_cfg["reduction_factor"]),
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=sweep["metric"],
            mode=sweep["mode"],
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=int(sweep["num_samples"]),
            max_concurrent_trials=sweep.get("max_concurrent_trials"),
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=sweep_dir.name,
            storage_path=str(sweep_dir.parent),
            failure_config=tune.FailureConfig(max_failures=int(sweep["max_failures"])),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=int(sweep["checkpoints_to_keep"])),
            verbose=int(sweep.get("verbose", 1)),
        ),
    )


def restore_tuner(trainable, sweep_dir: Path) -> tune.Tuner:
    """Continues a sweep whose driver stopped: finished trials stay finished, unfinished and errored ones resume
    from their last checkpoint, and the searcher proposes the remaining samples."""
    if not tune.Tuner.can_restore(str(sweep_dir)):
        raise FileNotFoundError(f"{sweep_dir} holds no Tune experiment state to resume from")
    return tune.Tuner.restore(str(sweep_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)


def trial_statuses(sweep_dir: Path) -> dict[str, str]:
    """Tune's status of each trial (``TERMINATED``, ``ERROR``, ``RUNNING``/``PENDING`` if the sweep was stopped),
    by trial directory name, from the experiment state Tune saved when ``fit`` returned."""
    return {Path(trial.path).name: trial.status for trial in tune.ExperimentAnalysis(str(sweep_dir)).trials}
