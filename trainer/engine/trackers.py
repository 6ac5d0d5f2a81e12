"""Experiment trackers (Accelerate's TensorBoard and Weights & Biases integrations), main process only.

``logger=tensorboard`` (default) writes ``RUN/tensorboard/``; ``logger=wandb`` logs to W&B (project, group
and run name from ``cfg.wandb``; ``WANDB_MODE=offline`` writes ``RUN/wandb/`` without a network);
``logger=both`` or ``logger=[tensorboard,wandb]`` does both; ``logger=none`` neither.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

KNOWN = ("tensorboard", "wandb")


def tracker_names(logger_setting) -> list[str]:
    if logger_setting is None:
        return []
    if isinstance(logger_setting, (list, tuple, ListConfig)):
        names = [str(n).lower() for n in logger_setting]
    else:
        setting = str(logger_setting).lower()
        names = {"both": list(KNOWN), "all": list(KNOWN), "none": [], "": []}.get(setting, [setting])
    unknown = sorted(set(names) - set(KNOWN))
    if unknown:
        raise ValueError(f"logger={logger_setting!r}: unknown tracker(s) {unknown}; "
                         "use tensorboard, wandb, both or none")
    return list(dict.fromkeys(names))


def build_trackers(cfg: DictConfig, run_dir: Path) -> list:
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    trackers = []
    for name in tracker_names(cfg.get("logger")):
        if name == "tensorboard":
            trackers.append(TensorBoardTracker("tensorboard", logging_dir=str(run_dir)))
        else:
            options: Mapping = OmegaConf.to_container(cfg.wandb, resolve=True) if cfg.get("wandb") else {}
            project = options.get("project") or "detection-trainer"
            init_kwargs = {key: options[key] for key in ("group", "name", "entity", "tags", "notes", "mode")
                           if options.get(key) not in (None, "", [])}
            init_kwargs["dir"] = str(run_dir)
            init_kwargs["config"] = OmegaConf.to_container(cfg, resolve=True)
            trackers.append(WandBTracker(project, **init_kwargs))
    return trackers


def start_trackers(accelerator, cfg: DictConfig, run_dir: Path) -> None:
    """Start the configured trackers on the main process only (W&B would otherwise open a run per process)."""
    accelerator.log_with = build_trackers(cfg, run_dir) if accelerator.is_main_process else []
    accelerator.init_trackers("detection-trainer")
