"""One Tune trial: the sampled parameters applied to the base training config, trained by the engine.

Each trial trains in its own run directory, ``<sweep dir>/<trial dir name>/``, which is also Tune's trial folder on
the storage path. Every validation reports the metrics and the engine's latest checkpoint to Tune; when Tune
restarts a trial (a retry after a failure, or ``resume=true`` after the driver died) the trial continues from that
checkpoint instead of from scratch.

A one-process trial runs the engine in the trial's own thread; a trial of several processes (one per GPU) runs it
under torchrun in child processes (``trainer.tuning.launcher``) and forwards their reports.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from omegaconf import OmegaConf
from ray import tune

from trainer.engine import train
from trainer.tuning.launcher import train_in_processes
from trainer.tuning.reports import finite_numbers
from trainer.tuning.space import apply_params


def trial_dirname(trial) -> str:
    """``trial_003_1a2b3c4d``: the trial's number in the sweep (Tune's counter, kept across resumes), then its id."""
    number = trial.experiment_tag.split("_", 1)[0]
    return f"trial_{int(number):03d}_{trial.trial_id}" if number.isdigit() else f"trial_{trial.trial_id}"


def report_to_tune(epoch: int, metrics: Mapping, checkpoint_dir: str | os.PathLike | None) -> None:
    """The engine's ``report_fn``: one Tune result per validation, with the checkpoint to resume from."""
    checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
    tune.report({**finite_numbers(metrics), "epoch": epoch}, checkpoint=checkpoint)


def report_record_to_tune(record: dict) -> None:
    """A training process's report (``trainer.tuning.reports``) to Tune. Its checkpoint snapshot is deleted once
    reported: ``tune.report`` has copied it to Tune's storage by then (``persist_current_checkpoint``)."""
    report_to_tune(record["epoch"], record["metrics"], record["checkpoint"])
    if record["checkpoint"]:
        shutil.rmtree(record["checkpoint"], ignore_errors=True)


def run_trial(params: dict, *, base_config: dict, sweep_dir: str, working_dir: str, sweep_name: str,
              processes: int) -> None:
    """Tune's function trainable (bound to the sweep with ``tune.with_parameters``)."""
    # Relative paths in the config (data, weights) mean the driver's folder; on another node of a cluster that
    # folder may not exist, and the paths must then be absolute or on shared storage.
    if Path(working_dir).is_dir():
        os.chdir(working_dir)
    run_dir = Path(sweep_dir) / Path(tune.get_context().get_trial_dir()).name
    cfg = apply_params(OmegaConf.create(base_config), params)
    if cfg.get("logger") in ("wandb", "both"):
        cfg.wandb.group = sweep_name
        cfg.wandb.name = run_dir.name
    checkpoint = tune.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext(None) as resume_from:
        # Only Tune's checkpoint counts: it is the one Tune's bookkeeping (iterations, ASHA rungs) agrees with.
        cfg.resume = resume_from or "never"
        if processes == 1:
            train(cfg, report_fn=report_to_tune, run_dir=run_dir)
        else:
            train_in_processes(cfg, run_dir, processes, report=report_record_to_tune)
