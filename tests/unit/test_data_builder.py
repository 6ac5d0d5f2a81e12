"""build_datasets / build_eval_dataset: config keys, splits, the class map, strictness; the BCCD counts."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from trainer.data.builder import build_datasets, build_eval_dataset, split_sources
from trainer.data.classes import ClassMap
from trainer.data.records import DataValidationError


def cfg(**overrides):
    return OmegaConf.create({"val_split": 0.0, "strict": True, "augmentation": "none", **overrides})


def test_config_file_defaults_load(sample_dataset_dir):
    config = OmegaConf.load(Path(__file__).resolve().parents[2] / "configs" / "dataset" / "jsonl.yaml")
    config.dataset_dir = str(sample_dataset_dir)
    bundle = build_datasets(config)
    assert len(bundle.train) + len(bundle.val) == 24 and bundle.test is None


def test_dataset_dir_with_seeded_val_split(sample_dataset_dir):
    bundle = build_datasets(cfg(dataset_dir=str(sample_dataset_dir), val_split=0.25), seed=1)
    again = build_datasets(cfg(dataset_dir=str(sample_dataset_dir), val_split=0.25), seed=1)
    other = build_datasets(cfg(dataset_dir=str(sample_dataset_dir), val_split=0.25), seed=2)
    assert (len(bundle.train), len(bundle.val)) == (18, 6)
    train_paths = [r.image_path for r in bundle.train.records]
    val_paths = [r.image_path for r in bundle.val.records]
    assert not set(train_paths) & set(val_paths)
    assert val_paths == [r.image_path for r in again.val.records]
    assert val_paths != [r.image_path for r in other.val.records]
    assert train_paths == sorted(train_paths)  # file order is kept within a split
    assert bundle.class_map == ClassMap(["circle", "square", "triangle"])  # discovered, sorted
    assert bundle.val.class_map is bundle.class_map


def test_no_val_split_means_no_val_set(sample_dataset_dir):
    bundle = build_datasets(cfg(dataset_dir=str(sample_dataset_dir)))
    assert len(bundle.train) == 24 and bundle.val is None


def test_explicit_files_and_test_split(sample_dataset_dir):
    bundle = build_datasets(cfg(train_jsonl=str(sample_dataset_dir / "train.jsonl"),
                                val_jsonl=str(sample_dataset_dir / "val.jsonl"),
                                test_jsonl=str(sample_dataset_dir / "val.jsonl"), val_split=0.5))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (18, 6, 6)  # val_split unused
    assert set(bundle.reports) == {"train", "val", "test"}


def test_explicit_class_list_keeps_order_and_drops_others(sample_dataset_dir):
    bundle = build_datasets(cfg(train_jsonl=str(sample_dataset_dir / "train.jsonl"),
                                val_jsonl=str(sample_dataset_dir / "val.jsonl")), classes=["triangle", "circle"])
    assert bundle.class_map.names == ("triangle", "circle")
    for dataset in (bundle.train, bundle.val):
        squares = sum(b.label == "square" for r in dataset.records for b in r.boxes)
        assert dataset.dropped_labels == {"square": squares}
    assert build_datasets(cfg(dataset_dir=str(sample_dataset_dir), classes=["square"])).class_map.names == ("square",)


def test_data_dir_rules(tmp_path, sample_dataset_dir):
    # JSONL elsewhere, images found through train_data_dir; val defaults to the train data dir.
    (tmp_path / "ann").mkdir()
    for name in ("train", "val"):
        text = (sample_dataset_dir / f"{name}.jsonl").read_text().replace('"data/', '"')
        (tmp_path / "ann" / f"{name}.jsonl").write_text(text)
    config = cfg(train_jsonl=str(tmp_path / "ann/train.jsonl"), val_jsonl=str(tmp_path / "ann/val.jsonl"),
                 train_data_dir=str(sample_dataset_dir / "data"))
    sources = split_sources(config)
    assert sources["val"][1] == sources["train"][1] == sample_dataset_dir / "data"
    bundle = build_datasets(config)
    assert (len(bundle.train), len(bundle.val)) == (18, 6)


def _with_broken_image(tmp_path, sample_dataset_dir):
    shutil.copytree(sample_dataset_dir, tmp_path / "ds")
    victim = sorted((tmp_path / "ds" / "data").glob("*.png"))[3]
    victim.write_bytes(b"")
    return tmp_path / "ds", victim


def test_unreadable_image_strict_names_file_and_line(tmp_path, sample_dataset_dir):
    ds, victim = _with_broken_image(tmp_path, sample_dataset_dir)
    with pytest.raises(DataValidationError) as info:
        build_datasets(cfg(dataset_dir=str(ds)))
    (issue,) = info.value.issues
    line_no = next(i for i, t in enumerate((ds / "dataset.jsonl").read_text().splitlines(), 1) if victim.name in t)
    assert issue.line == line_no and issue.field == "image_path" and victim.name in str(info.value)


def test_unreadable_image_lenient_is_dropped_and_counted(tmp_path, sample_dataset_dir):
    ds, victim = _with_broken_image(tmp_path, sample_dataset_dir)
    bundle = build_datasets(cfg(dataset_dir=str(ds), strict=False))
    assert len(bundle.train) == 23 and bundle.reports["train"].counts["unreadable_image"] == 1
    assert victim not in {r.image_path for r in bundle.train.records}


def test_bad_records_lenient_are_counted_per_split(tmp_path, sample_dataset_dir):
    shutil.copytree(sample_dataset_dir, tmp_path / "ds")
    with open(tmp_path / "ds" / "val.jsonl", "a") as fh:
        fh.write("{not json\n")
    config = cfg(train_jsonl=str(tmp_path / "ds/train.jsonl"), val_jsonl=str(tmp_path / "ds/val.jsonl"))
    with pytest.raises(DataValidationError, match=r"val.jsonl:7.*malformed JSON"):
        build_datasets(config)
    config.strict = False
    bundle = build_datasets(config)
    assert bundle.reports["val"].counts == {"malformed_json": 1} and len(bundle.val) == 6


@pytest.mark.parametrize("overrides,error,message", [
    ({}, ValueError, "set dataset.dataset_dir or dataset.train_jsonl"),
    ({"dataset_dir": "/nonexistent/folder"}, DataValidationError, "no dataset.jsonl"),
    ({"train_jsonl": "/nonexistent/a.jsonl"}, DataValidationError, "annotation file not found"),
])
def test_configuration_errors(overrides, error, message):
    with pytest.raises(error, match=message):
        build_datasets(cfg(**overrides))


def test_training_file_without_labels_and_no_class_list(tmp_path, sample_dataset_dir):
    negative = next(json.loads(t) for t in (sample_dataset_dir / "dataset.jsonl").read_text().splitlines()
                    if not json.loads(t)["bounding_box_annotations"])
    negative["image_path"] = str(sample_dataset_dir / negative["image_path"])
    (tmp_path / "neg.jsonl").write_text(json.dumps(negative) + "\n")
    with pytest.raises(DataValidationError, match="no labels found"):
        build_datasets(cfg(train_jsonl=str(tmp_path / "neg.jsonl")))


def test_unknown_augmentation_fails_fast(sample_dataset_dir):
    with pytest.raises(ValueError, match="unknown augmentation policy"):
        build_datasets(cfg(dataset_dir=str(sample_dataset_dir), augmentation="nope"))


def test_eval_dataset_uses_the_given_class_map_and_never_resizes(sample_dataset_dir):
    class_map = ClassMap(["triangle", "square"])
    dataset, report = build_eval_dataset(sample_dataset_dir / "val.jsonl", class_map)
    assert dataset.class_map is class_map and not report.counts
    image, target = dataset[0]
    assert image.shape == (3, 96, 128) and set(target["labels"].tolist()) <= {1, 2}
    circles = sum(b.label == "circle" for r in dataset.records for b in r.boxes)
    assert circles > 0 and dataset.dropped_labels == {"circle": circles}


def test_bccd_counts(bccd_dir):
    bundle = build_datasets(cfg(dataset_dir=str(bccd_dir)))
    assert len(bundle.train) == 364
    assert bundle.class_map.names == ("Platelets", "RBC", "WBC")
    assert bundle.train.num_boxes() == 4886 and not bundle.train.dropped_labels
    image, target = bundle.train[0]
    assert image.shape == (3, 480, 640) and len(target["boxes"]) == len(bundle.train.records[0].boxes)
