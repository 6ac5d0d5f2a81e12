"""The eval command: a trained run's checkpoint on a JSONL split -> metrics, predictions, plots, pictures.

Works the same in one process and under ``accelerate launch`` (every process predicts its shard; the
main process writes the files).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from trainer.data.builder import build_eval_dataset, load_split, split_off_validation, split_sources
from trainer.data.classes import ClassMap
from trainer.data.dataset import DetectionDataset
from trainer.data.transforms import build_transforms
from trainer.evaluation.coco import build_coco_ground_truth, to_coco_results
from trainer.evaluation.distributed import build_accelerator, evaluate_model
from trainer.evaluation.plots import plot_confusion_matrix, plot_precision_recall
from trainer.evaluation.predictors import checkpoint_format, load_predictor
from trainer.evaluation.report import format_metrics_table, write_json
from trainer.evaluation.visualize import save_visualizations

log = logging.getLogger(__name__)
SPLIT_FILES = {"train": "train.jsonl", "val": "val.jsonl", "test": "test.jsonl", "all": "dataset.jsonl"}


def split_annotations(dataset_dir: Path, split: str) -> Path:
    """``DIR/<split>.jsonl``; ``all`` is ``DIR/dataset.jsonl``; a path ending in .jsonl is taken as is."""
    if split.endswith(".jsonl"):
        return Path(split) if Path(split).is_absolute() else dataset_dir / split
    if split not in SPLIT_FILES:
        raise ValueError(f"split={split!r}: choose one of {', '.join(SPLIT_FILES)} or give a .jsonl file")
    return dataset_dir / SPLIT_FILES[split]


def build_split_dataset(dataset_dir: Path, split: str, class_map: ClassMap, run_config: dict, data_dir=None,
                        strict: bool = True):
    """The evaluation dataset of ``split`` and a description of where its images came from.

    Without a ``val.jsonl``, ``split=val`` means the images the run held out of ``dataset.jsonl`` for
    validation: the same seeded split of the same file, from the run's saved config.
    """
    dataset_cfg = run_config.get("dataset") or {}
    clip_tolerance = float(dataset_cfg.get("clip_tolerance", 0.01))
    annotations = split_annotations(dataset_dir, split)
    if data_dir is None and (dataset_dir / "data").is_dir():
        data_dir = dataset_dir / "data"
    if annotations.is_file() or split != "val":
        dataset, report = build_eval_dataset(annotations, class_map, data_dir, strict, clip_tolerance)
        return dataset, report, {"annotations": str(annotations)}
    all_file = dataset_dir / SPLIT_FILES["all"]
    try:
        trained_on = split_sources(dataset_cfg)["train"][0] if dataset_cfg.get("val_jsonl") is None else None
    except ValueError:
        trained_on = None
    if trained_on is None or not all_file.is_file() or trained_on.resolve() != all_file.resolve():
        raise FileNotFoundError(f"{annotations} does not exist, and the run did not hold out its validation images "
                                f"from {all_file}; choose split=all, train, test or a .jsonl file")
    records, report = load_split(all_file, data_dir, strict, clip_tolerance)
    _, val_records = split_off_validation(records, float(dataset_cfg.get("val_split", 0.0)),
                                          int(run_config.get("seed", 0)))
    if not val_records:
        raise ValueError(f"the run's validation split of {all_file} is empty (dataset.val_split=0)")
    dataset = DetectionDataset(val_records, class_map, build_transforms("none"))
    return dataset, report, {"annotations": str(all_file), "held_out": {
        "val_split": dataset_cfg.get("val_split"), "seed": run_config.get("seed", 0)}}


def load_run(run_dir: Path) -> tuple[dict[str, Any], ClassMap]:
    """The saved training config (plain dict, interpolations left as written) and the class map of a run."""
    config_path, classes_path = run_dir / ".hydra" / "config.yaml", run_dir / "classes.json"
    for path in (config_path, classes_path):
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir} is not a training run directory: {path} is missing")
    return yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}, ClassMap.load(classes_path)


def output_dir_name(dataset_dir: Path, split: str, checkpoint: Path, fmt: str) -> str:
    dataset_name = f"{dataset_dir.resolve().name}_{Path(split).stem}"
    return f"eval_{dataset_name}_{checkpoint.stem}_{fmt}"


def evaluate_run(cfg) -> Path | None:
    """Runs the eval command for the config in configs/eval.yaml; returns the output folder (main process)."""
    if not cfg.dataset_dir or not cfg.run_dir:
        raise ValueError("dataset_dir=DIR and run_dir=RUN are required")
    run_dir, dataset_dir = Path(cfg.run_dir), Path(cfg.dataset_dir)
    run_config, class_map = load_run(run_dir)
    checkpoint = Path(cfg.checkpoint_path) if cfg.checkpoint_path else run_dir / "best_model.pth"
    fmt = checkpoint_format(checkpoint)
    dataset, report, source = build_split_dataset(dataset_dir, str(cfg.split), class_map, run_config,
                                                  Path(cfg.data_dir) if cfg.data_dir else None, cfg.strict)

    accelerator = build_accelerator(cpu=cfg.cpu)
    predictor, model_config = load_predictor(checkpoint, class_map, use_ema=cfg.use_ema, device=accelerator.device)
    model_name = model_config.get("name") or (run_config.get("model") or {}).get("name") or "model"
    if accelerator.is_main_process:
        log.info("evaluating %s (%s) on %d images of %s with %d process(es)",
                 checkpoint, fmt, len(dataset), source["annotations"], accelerator.num_processes)
    metrics, predictions = evaluate_model(
        predictor, dataset, accelerator, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
        score_threshold=cfg.score_threshold, iou_threshold=cfg.iou_threshold, progress=True)
    out_dir = None
    if accelerator.is_main_process:
        out_dir = Path(cfg.output_dir) if cfg.output_dir else run_dir / output_dir_name(
            dataset_dir, str(cfg.split), checkpoint, fmt)
        write_outputs(out_dir, model_name, metrics, predictions, dataset, cfg,
                      checkpoint={"path": str(checkpoint), "format": fmt, "use_ema": bool(cfg.use_ema)},
                      dataset_info={"dir": str(dataset_dir), "split": str(cfg.split), **source,
                                    "num_images": len(dataset), "dropped_labels": dict(dataset.dropped_labels),
                                    "validation_warnings": dict(report.counts)})
        print(format_metrics_table(metrics))
        print(f"results written to {out_dir}")
    accelerator.wait_for_everyone()
    return out_dir


def write_outputs(out_dir: Path, model_name: str, metrics: dict, predictions, dataset, cfg,
                  checkpoint: dict, dataset_info: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(build_coco_ground_truth(dataset.records, dataset.class_map), out_dir / "ground_truth_coco.json")
    write_json(to_coco_results(predictions), out_dir / f"{model_name}_predictions.json")
    write_json({"model": model_name, "checkpoint": checkpoint, "dataset": dataset_info, **metrics},
               out_dir / f"{model_name}_metrics.json")
    curves = metrics["precision_recall_curves"]
    plot_precision_recall(curves["recall"], curves["precision"], out_dir / "precision_recall.png",
                          ap50={name: row["AP50"] for name, row in metrics["per_class"].items()})
    confusion = metrics["confusion_matrix"]
    plot_confusion_matrix(confusion["counts"], confusion["labels"], out_dir / "confusion_matrix.png")
    save_visualizations(dataset.records, predictions, dataset.class_map, out_dir / "visualizations",
                        num_images=cfg.num_visualizations, seed=cfg.seed, score_threshold=cfg.score_threshold)
