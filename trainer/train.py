"""Train a detector: ``python trainer/train.py [key=value ...]`` or ``accelerate launch trainer/train.py ...``.

Exit codes: 0 finished (or early-stopped); 75 stopped by SIGUSR1/SIGTERM after writing a checkpoint
(requeue and rerun: ``resume=auto`` continues); 3 the loss stayed non-finite; 2 invalid data or a missing
file. The engine has already logged the reason (console and RUN/train.log).
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from trainer.engine import train_exit_code
from trainer.engine.run_dir import register_resolvers

register_resolvers()


@hydra.main(version_base=None, config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    code = train_exit_code(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
