"""What a finished sweep leaves behind: ``trials.csv``, ``optimization_results.yaml``, the plots, and the best
parameters as a config file that ``trainer/train.py optimization_results=<model>`` applies."""
from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna.distributions as od
import yaml

from trainer.tuning.space import params_to_overrides

logger = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"
TRIALS_FILE = "trials.csv"


@dataclass(frozen=True)
class TrialSummary:
    number: int                  # 1-based order in which the searcher proposed the trial
    name: str                    # its run directory's name
    status: str                  # completed | stopped_early | error | unfinished (the sweep was stopped)
    epochs: int                  # validations reported
    best_value: float | None     # best metric over its epochs (what its best_model.pth scored)
    last_value: float | None
    params: dict[str, Any] = field(default_factory=dict)
    run_dir: str = ""


def summarize_result(result, metric: str, mode: str, max_epochs: int, param_names: Sequence[str],
                     tune_status: str | None) -> TrialSummary:
    """One Tune ``Result`` (and Tune's status of its trial) -> ``TrialSummary``."""
    run_dir = Path(result.path)
    number = run_dir.name.split("_")[1]
    history = result.metrics_dataframe
    values = [] if history is None or metric not in history else [v for v in history[metric] if not math.isnan(v)]
    epochs = int((result.metrics or {}).get("training_iteration", 0))
    if result.error is not None or tune_status == "ERROR":
        status = "error"
    elif tune_status != "TERMINATED":
        status = "unfinished"
    else:
        status = "completed" if epochs >= max_epochs else "stopped_early"
    config = result.config or {}
    return TrialSummary(
        number=int(number) if number.isdigit() else 0,
        name=run_dir.name,
        status=status,
        epochs=epochs,
        best_value=(max(values) if mode == "max" else min(values)) if values else None,
        last_value=values[-1] if values else None,
        params={name: config.get(name) for name in param_names},
        run_dir=str(run_dir),
    )


def best_trial(trials: Iterable[TrialSummary], mode: str) -> TrialSummary | None:
    scored = [t for t in trials if t.best_value is not None]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda t: t.best_value)


def write_trials_csv(trials: Sequence[TrialSummary], param_names: Sequence[str], metric: str, path: Path) -> None:
    columns = ["trial", "name", "status", "epochs", metric, f"{metric} (last epoch)", *param_names, "run_dir"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for t in sorted(trials, key=lambda t: t.number):
            writer.writerow([t.number, t.name, t.status, t.epochs, _blank_if_none(t.best_value),
                             _blank_if_none(t.last_value), *(t.params.get(p) for p in param_names), t.run_dir])


def _existing(path: Path) -> str | None:
    return str(path) if path.is_file() else None


def _blank_if_none(value):
    return "" if value is None else value


def param_importances(trials: Sequence[TrialSummary], space: Mapping[str, od.BaseDistribution],
                      mode: str) -> dict[str, float]:
    """Optuna's default (PED-ANOVA) importance of each parameter for the best-epoch metric, on an Optuna study
    rebuilt from the trials (the searcher's own study is not kept after a resume). PED-ANOVA is deterministic and,
    unlike fANOVA, needs no scikit-learn.

    Empty when fewer than two trials have a value or all values are equal (nothing to explain).
    """
    import optuna

    scored = [t for t in trials if t.best_value is not None and all(t.params.get(p) is not None for p in space)]
    if len(scored) < 2 or len({t.best_value for t in scored}) < 2:
        return {}
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for t in scored:
        study.add_trial(optuna.trial.create_trial(params=t.params, distributions=dict(space), value=t.best_value))
    return {name: float(value) for name, value in optuna.importance.get_param_importances(study).items()}


def write_best_config(params: Mapping[str, Any], path: Path, comment: str) -> None:
    """The best parameters as a ``@package _global_`` config: selected by ``optimization_results=<model>``, its keys
    land where the sweep found them (``training.lr``, ``model.loss_weights...``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# @package _global_\n" + "".join(f"# {line}\n" for line in comment.splitlines())
    path.write_text(header + yaml.safe_dump(params_to_overrides(params), sort_keys=True), encoding="utf-8")


def to_plain(value):
    """numpy scalars -> Python numbers, so YAML stays readable."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return value.item()
    return value


def write_results_yaml(path: Path, *, metric: str, mode: str, trials: Sequence[TrialSummary],
                       best: TrialSummary | None, importances: Mapping[str, float], sweep_dir: Path,
                       best_config_path: Path | None) -> dict:
    counts = {status: sum(t.status == status for t in trials)
              for status in ("completed", "stopped_early", "error", "unfinished")}
    summary = {
        "metric": metric,
        "mode": mode,
        "best_value": best.best_value if best else None,
        "best_params": {k: to_plain(v) for k, v in best.params.items()} if best else {},
        "best_trial": best.name if best else None,
        "best_run_dir": best.run_dir if best else None,
        "best_checkpoint": _existing(Path(best.run_dir) / "best_model.pth") if best else None,
        "num_trials": len(trials),
        "num_completed": counts["completed"],
        "num_stopped_early": counts["stopped_early"],
        "num_errored": counts["error"],
        "num_unfinished": counts["unfinished"],
        "param_importances": dict(importances),
        "sweep_dir": str(sweep_dir),
        "best_config": str(best_config_path) if best_config_path else None,
    }
    path.write_text(yaml.safe_dump(summary, sort_keys=False), encoding="utf-8")
    return summary
