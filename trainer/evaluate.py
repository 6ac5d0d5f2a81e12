"""Evaluate a trained run: python trainer/evaluate.py dataset_dir=DIR run_dir=RUN [checkpoint_path=...] [split=val]

Exit codes: 0 done; 2 bad input (data, paths, arguments), with one message naming the problem.
"""
import hydra
from omegaconf import DictConfig

from trainer.evaluation.cli import run_command
from trainer.evaluation.runner import evaluate_run


@hydra.main(version_base=None, config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    run_command(evaluate_run, cfg)


if __name__ == "__main__":
    main()
