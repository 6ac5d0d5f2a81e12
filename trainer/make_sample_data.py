"""Write the built-in synthetic dataset: python trainer/make_sample_data.py out_dir=... num_images=... seed=..."""
import hydra
from omegaconf import DictConfig

from trainer.data.sample import generate_sample_dataset


@hydra.main(version_base=None, config_path="../configs", config_name="make_sample_data")
def main(cfg: DictConfig) -> None:
    out_dir = generate_sample_dataset(cfg.out_dir, num_images=cfg.num_images, seed=cfg.seed,
                                      image_size=tuple(cfg.image_size), val_fraction=cfg.val_fraction)
    print(f"sample dataset: {cfg.num_images} images in {out_dir.resolve()} "
          f"(dataset.jsonl, train.jsonl, val.jsonl, data/)")


if __name__ == "__main__":
    main()
