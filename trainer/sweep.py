"""Hyper-parameter search: ``python trainer/sweep.py --config-name=sweep [key=value ...]``.

Runs Ray Tune (OptunaSearch with a seeded TPE sampler, ASHA early stopping) over ``trainer/train.py``'s engine;
on a running cluster: ``ray job submit --address http://HEAD:8265 --working-dir . -- python trainer/sweep.py ...``.
"""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from trainer.tuning import SweepFailed, run_sweep
from trainer.tuning.space import SweepConfigError


@hydra.main(version_base=None, config_path="../configs", config_name="sweep")
def main(cfg: DictConfig) -> None:
    try:
        run_sweep(cfg)
    except (SweepConfigError, SweepFailed, FileNotFoundError) as error:
        logging.getLogger("trainer.sweep").error("%s", error)
        sys.exit(1)


if __name__ == "__main__":
    main()
