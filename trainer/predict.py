"""Predict boxes on new images: python trainer/predict.py run_dir=RUN images=DIR_OR_JSONL output=OUT [draw=true]"""
import hydra
from omegaconf import DictConfig

from trainer.evaluation.cli import run_command
from trainer.evaluation.prediction import run_prediction


@hydra.main(version_base=None, config_path="../configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    run_command(run_prediction, cfg)


if __name__ == "__main__":
    main()
