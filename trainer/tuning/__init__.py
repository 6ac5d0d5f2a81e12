"""Hyper-parameter search: Ray Tune running the training engine, OptunaSearch (seeded TPE) and ASHA."""
from trainer.tuning.paths import register_resolver
from trainer.tuning.runner import SweepFailed, run_sweep

register_resolver()

__all__ = ["SweepFailed", "run_sweep"]
