"""Score saved predictions: python trainer/score.py gt=GT.jsonl predictions=PRED.jsonl [output=DIR]"""
import hydra
from omegaconf import DictConfig

from trainer.evaluation.cli import run_command
from trainer.evaluation.scoring import run_scoring


@hydra.main(version_base=None, config_path="../configs", config_name="score")
def main(cfg: DictConfig) -> None:
    run_command(run_scoring, cfg)


if __name__ == "__main__":
    main()
