"""Build the train/val/test datasets and the one class map from the ``dataset`` config."""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.data.classes import ClassMap
from trainer.data.dataset import DetectionDataset
from trainer.data.images import ImageReadError, image_size, read_image
from trainer.data.records import DataIssue, DataValidationError, Record, ValidationReport, load_records
from trainer.data.transforms import build_transforms

log = logging.getLogger(__name__)


@dataclass
class DataBundle:
    train: DetectionDataset
    val: DetectionDataset | None
    test: DetectionDataset | None
    class_map: ClassMap
    reports: dict[str, ValidationReport] = field(default_factory=dict)  # per split: what validation fixed or dropped


def _path(value) -> Path | None:
    return Path(str(value)).expanduser() if value not in (None, "") else None


def split_sources(dataset_cfg: Mapping) -> dict[str, tuple[Path | None, Path | None]]:
    """``{"train"|"val"|"test": (jsonl, data_dir)}``.

    ``dataset_dir`` (a folder with ``dataset.jsonl`` and ``data/``) sets the train defaults;
    explicit ``train_jsonl``/``train_data_dir`` win. ``val_data_dir``/``test_data_dir`` default to the
    train data dir.
    """
    dataset_dir = _path(dataset_cfg.get("dataset_dir"))
    train_jsonl = _path(dataset_cfg.get("train_jsonl"))
    train_data_dir = _path(dataset_cfg.get("train_data_dir"))
    if dataset_dir is not None:
        if train_jsonl is None and not (dataset_dir / "dataset.jsonl").is_file():
            raise DataValidationError([DataIssue(dataset_dir, 0, "dataset_dir", str(dataset_dir),
                                                 "no dataset.jsonl in this folder (set dataset.train_jsonl instead)")])
        train_jsonl = train_jsonl or dataset_dir / "dataset.jsonl"
        train_data_dir = train_data_dir or dataset_dir / "data"
    if train_jsonl is None:
        raise ValueError("no training data configured: set dataset.dataset_dir or dataset.train_jsonl")
    return {
        "train": (train_jsonl, train_data_dir),
        "val": (_path(dataset_cfg.get("val_jsonl")), _path(dataset_cfg.get("val_data_dir")) or train_data_dir),
        "test": (_path(dataset_cfg.get("test_jsonl")), _path(dataset_cfg.get("test_data_dir")) or train_data_dir),
    }


def load_split(jsonl: str | Path, data_dir: str | Path | None = None, strict: bool = True,
               clip_tolerance: float = 0.01,
               max_image_pixels: int | None = None) -> tuple[list[Record], ValidationReport]:
    """Records of one JSONL file whose image headers are readable.

    An unreadable image (missing header, not an image, too many pixels) is an error naming the file
    and line when ``strict``; otherwise the record is dropped and counted as ``unreadable_image``.
    Reading headers only keeps this fast; ``check_data`` also decodes every image.
    """
    records, report = load_records(jsonl, data_dir, strict=strict, clip_tolerance=clip_tolerance)
    usable, errors = drop_unreadable_images(records, report, strict, max_image_pixels)
    if errors:
        raise DataValidationError(errors)
    return usable, report


def drop_unreadable_images(records: Sequence[Record], report: ValidationReport, strict: bool,
                           max_image_pixels: int | None = None,
                           decode: bool = False) -> tuple[list[Record], list[DataIssue]]:
    """``(readable records, errors)``: header read (and every pixel decoded when ``decode``).

    An unreadable image is an error naming file and line when ``strict``; otherwise the record is
    dropped and counted in ``report`` as ``unreadable_image``.
    """
    usable, errors = [], []
    for record in records:
        try:
            image_size(record.image_path, max_image_pixels)
            if decode:
                read_image(record.image_path, max_image_pixels)  # finds truncated and corrupt pixel data
        except ImageReadError as exc:
            issue = DataIssue(record.source, record.line, "image_path", str(record.image_path), exc.reason)
            if strict:
                errors.append(issue)
            else:
                report.warn("unreadable_image", issue)
            continue
        usable.append(record)
    return usable, errors


def split_off_validation(records: Sequence[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """A seeded ``fraction`` of ``records`` for validation (at least one each way when possible); order kept."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"dataset.val_split must be in [0, 1), got {fraction}")
    num_val = int(round(fraction * len(records)))
    if fraction > 0 and len(records) >= 2:
        num_val = min(max(num_val, 1), len(records) - 1)
    val_ids = set(np.random.default_rng(seed).permutation(len(records))[:num_val].tolist())
    train = [r for i, r in enumerate(records) if i not in val_ids]
    val = [r for i, r in enumerate(records) if i in val_ids]
    return train, val


def build_datasets(dataset_cfg: Mapping, classes: Sequence[str] | None = None, strict: bool | None = None,
                   seed: int = 0, train_transforms: Callable | None = None,
                   eval_transforms: Callable | None = None) -> DataBundle:
    """Train (with augmentation ``dataset_cfg.augmentation`` unless ``train_transforms`` is given), val and
    test datasets, and the class map: ``classes`` (or ``dataset_cfg.classes``) in its order, else every
    label of the training file, sorted. ``strict`` defaults to ``dataset_cfg.strict``."""
    strict = bool(dataset_cfg.get("strict", True)) if strict is None else strict
    clip_tolerance = float(dataset_cfg.get("clip_tolerance", 0.01))
    max_pixels = dataset_cfg.get("max_image_pixels")
    classes = classes if classes is not None else dataset_cfg.get("classes")
    sources = split_sources(dataset_cfg)

    reports: dict[str, ValidationReport] = {}
    records: dict[str, list[Record] | None] = {}
    for split, (jsonl, data_dir) in sources.items():
        if jsonl is None:
            records[split] = None
            continue
        records[split], reports[split] = load_split(jsonl, data_dir, strict, clip_tolerance, max_pixels)

    train_jsonl = sources["train"][0]
    if not records["train"]:
        raise DataValidationError([DataIssue(train_jsonl, 0, "", "", "no usable images in the training file")])
    try:
        class_map = ClassMap.from_labels((b.label for r in records["train"] for b in r.boxes),
                                         list(classes) if classes is not None else None)
    except ValueError as exc:
        raise DataValidationError([DataIssue(train_jsonl, 0, "annotation_label", "", str(exc))]) from None
    if records["val"] is None:
        records["train"], val = split_off_validation(records["train"], float(dataset_cfg.get("val_split", 0.0)), seed)
        records["val"] = val or None

    train_transforms = train_transforms or build_transforms(str(dataset_cfg.get("augmentation", "default")))
    eval_transforms = eval_transforms or build_transforms("none")
    datasets = {split: DetectionDataset(recs, class_map, train_transforms if split == "train" else eval_transforms)
                if recs is not None else None for split, recs in records.items()}
    for split, report in reports.items():
        if report.counts:
            log.warning("%s data: %s", split, ", ".join(f"{k}: {v}" for k, v in sorted(report.counts.items())))
    for split, dataset in datasets.items():
        if dataset is not None and dataset.dropped_labels:
            log.warning("%s data: dropped labels not in the class map: %s", split, dict(dataset.dropped_labels))
    return DataBundle(datasets["train"], datasets["val"], datasets["test"], class_map, reports)


def build_eval_dataset(jsonl: str | Path, class_map: ClassMap, data_dir: str | Path | None = None,
                       strict: bool = True, clip_tolerance: float = 0.01,
                       transforms: Callable | None = None) -> tuple[DetectionDataset, ValidationReport]:
    """One JSONL file as an evaluation dataset with a fixed (trained) class map; never resizes."""
    records, report = load_split(jsonl, data_dir, strict, clip_tolerance)
    if not records:
        raise DataValidationError([DataIssue(Path(jsonl), 0, "", "", "no usable images")])
    return DetectionDataset(records, class_map, transforms or build_transforms("none")), report
