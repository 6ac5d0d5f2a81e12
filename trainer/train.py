"""Train a detector: ``python trainer/train.py [key=value ...]`` or ``accelerate launch trainer/train.py ...``.

Exit codes: 0 finished (or early-stopped); 75 stopped by SIGUSR1/SIGTERM after writing a checkpoint
(requeue and rerun: ``resume=auto`` continues); 3 the loss stayed non-finite; 2 invalid data or a missing
file. The engine has already logged the reason (console and RUN/train.log).
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from trainer.engine import EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_PREEMPTED, USER_ERRORS, TrainingDiverged, train
from trainer.engine.run_dir import register_resolvers

register_resolvers()


@hydra.main(version_base=None, config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        result = train(cfg)
    except TrainingDiverged:
        sys.exit(EXIT_DIVERGED)
    except USER_ERRORS:
        sys.exit(EXIT_BAD_INPUT)
    if result["status"] == "preempted":
        sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
    main()
