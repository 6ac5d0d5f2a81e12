"""The synthetic sample dataset: layout, determinism, content."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.data.images import image_size
from trainer.data.records import load_records
from trainer.data.sample import CLASSES, generate_sample_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_other_seeds_differ(tmp_path):
    a = digest(generate_sample_dataset(tmp_path / "a", num_images=12, seed=5, image_size=(64, 48)))
    b = digest(generate_sample_dataset(tmp_path / "b", num_images=12, seed=5, image_size=(64, 48)))
    c = digest(generate_sample_dataset(tmp_path / "c", num_images=12, seed=6, image_size=(64, 48)))
    assert a == b
    assert a["dataset.jsonl"] != c["dataset.jsonl"]


def test_layout_splits_and_content(sample_dataset_dir):
    all_records, report = load_records(sample_dataset_dir / "dataset.jsonl")
    train, _ = load_records(sample_dataset_dir / "train.jsonl")
    val, _ = load_records(sample_dataset_dir / "val.jsonl")
    assert not report.counts  # clean data: nothing clipped, nothing dropped
    assert len(all_records) == 24 and len(val) == 6 and len(train) == 18
    assert {r.image_path for r in train} | {r.image_path for r in val} == {r.image_path for r in all_records}
    assert not {r.image_path for r in train} & {r.image_path for r in val}
    suffixes = {r.image_path.suffix for r in all_records}
    assert suffixes == {".png", ".jpg"}
    assert all(image_size(r.image_path) == (128, 96) for r in all_records)
    assert sum(not r.boxes for r in all_records) == 2  # negatives
    boxes = [b for r in all_records for b in r.boxes]
    assert {b.label for b in boxes} == set(CLASSES)
    widths = [b.x_max - b.x_min for b in boxes]
    assert max(widths) > 2 * min(widths)  # objects vary in size ...
    assert len({round(b.x_min, 2) for b in boxes}) > len(boxes) // 2  # ... and position


def test_shapes_are_drawn_inside_their_boxes(tmp_path):
    from trainer.data.images import read_image

    out = generate_sample_dataset(tmp_path, num_images=10, seed=1, image_size=(96, 64))
    records, _ = load_records(out / "dataset.jsonl")
    for record in records:
        image = read_image(record.image_path).float()
        for b in record.boxes:
            x0, y0, x1, y1 = int(b.x_min * 96), int(b.y_min * 64), int(b.x_max * 96), int(b.y_max * 64)
            cy, cx = (y0 + 3 * y1) // 4, (x0 + x1) // 2  # lower middle: inside circles, squares and triangles
            saturation = image[:, cy, cx].max() - image[:, cy, cx].min()
            assert saturation > 60, f"{record.image_path.name}: no coloured shape at the {b.label} box"


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_images=0), "num_images"), (dict(val_fraction=1.0), "val_fraction"), (dict(image_size=(8, 8)), "16x16")])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_sample_dataset(tmp_path, **{"num_images": 4, **kwargs})


def test_command_line(tmp_path):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "trainer" / "make_sample_data.py"),
                             f"out_dir={tmp_path / 'cli'}", "num_images=6", "seed=2", "image_size=[64,48]"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "6 images" in result.stdout
    assert digest(tmp_path / "cli") == digest(generate_sample_dataset(tmp_path / "api", 6, seed=2, image_size=(64, 48)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api", "cli"]  # no Hydra output folders left behind
