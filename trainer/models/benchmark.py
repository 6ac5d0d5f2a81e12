"""Benchmark: train a detector from scratch on the synthetic sample data and report COCO mAP on its val split.

    python -m trainer.models.benchmark --model custom_detector --images 200 --epochs 24

Self-contained (plain PyTorch loop, one process) so it measures the model, not the training engine.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from trainer.data.builder import load_split
from trainer.data.classes import ClassMap
from trainer.data.dataset import DetectionDataset, collate_fn
from trainer.data.sample import CLASSES, generate_sample_dataset
from trainer.data.transforms import build_transforms
from trainer.evaluation.coco import build_coco_ground_truth, to_coco_results
from trainer.evaluation.metrics import compute_metrics
from trainer.models import build_model

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "model"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="custom_detector", help="a config name in configs/model/")
    parser.add_argument("--images", type=int, default=200, help="sample images (20%% go to val)")
    parser.add_argument("--image-size", type=int, nargs=2, default=(256, 192), metavar=("W", "H"))
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (cosine decay)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="model config overrides, e.g. min_size=192 max_size=256")
    return parser.parse_args()


@torch.no_grad()
def predict(model, dataset: DetectionDataset, batch_size: int) -> dict[int, dict]:
    model.eval()
    predictions = {}
    for images, targets in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn):
        for target, output in zip(targets, model(images)):
            predictions[target["image_id"]] = output
    return predictions


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    model_cfg = OmegaConf.merge(OmegaConf.load(CONFIG_DIR / f"{args.model}.yaml"),
                                OmegaConf.from_dotlist(args.overrides))
    class_map = ClassMap(CLASSES)
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_sample_dataset(tmp, num_images=args.images, seed=args.seed,
                                       image_size=tuple(args.image_size), val_fraction=0.2)
        train_records, _ = load_split(data / "train.jsonl")
        val_records, _ = load_split(data / "val.jsonl")
        train_set = DetectionDataset(train_records, class_map, build_transforms("flip"))
        val_set = DetectionDataset(val_records, class_map, build_transforms("none"))
        model = build_model(model_cfg, class_map.num_classes)
        loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, collate_fn=collate_fn)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                      weight_decay=1e-4)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.epochs * len(loader),
                                                        pct_start=0.1)
        start = time.time()
        for epoch in range(args.epochs):
            model.train()
            total = 0.0
            for images, targets in loader:
                loss = sum(model(images, targets).values())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += loss.item()
            print(f"epoch {epoch + 1}/{args.epochs} loss {total / len(loader):.3f} ({time.time() - start:.0f} s)",
                  flush=True)
        train_seconds = time.time() - start
        metrics = compute_metrics(build_coco_ground_truth(val_set.records, class_map),
                                  to_coco_results(predict(model, val_set, args.batch_size)), class_map)
    summary = {"model": args.model, "params": sum(p.numel() for p in model.parameters()),
               "train_images": len(train_set), "val_images": len(val_set), "epochs": args.epochs,
               "train_seconds": round(train_seconds), "torch_threads": torch.get_num_threads(),
               "mAP": metrics["stats"]["AP"], "mAP50": metrics["stats"]["AP50"]}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
