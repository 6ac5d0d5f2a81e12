"""Export a trained run to ONNX: python trainer/export.py run_dir=RUN [checkpoint_path=...] [quantize=true]"""
import hydra
from omegaconf import DictConfig, OmegaConf

from trainer.deploy.convert import convert_run


@hydra.main(version_base=None, config_path="../configs", config_name="export")
def main(cfg: DictConfig) -> None:
    out_dir = convert_run(OmegaConf.to_container(cfg, resolve=True))
    print(f"ONNX model and conversion summary written to {out_dir}")


if __name__ == "__main__":
    main()
