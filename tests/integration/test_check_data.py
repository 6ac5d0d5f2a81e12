"""trainer/check_data.py as a user runs it: summary, exit codes, no tracebacks for bad data."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.data.check import check_dataset, format_result

REPO_ROOT = Path(__file__).resolve().parents[2]


def check_data(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "trainer" / "check_data.py"), *args],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def test_clean_dataset_summary_and_json(sample_dataset_dir, tmp_path):
    result = check_data(f"jsonl={sample_dataset_dir / 'dataset.jsonl'}", f"summary_json={tmp_path / 's.json'}",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["usable"] and summary["images"] == 24 and summary["negatives"] == 2
    assert summary["classes"] == ["circle", "square", "triangle"]
    assert sum(summary["boxes_per_class"].values()) == summary["boxes"] == sum(summary["box_sizes"].values())
    assert summary["image_sizes"] == {"128x96": 24} and summary["errors"] == []
    assert "images: 24 (2 without boxes)" in result.stdout and "result: usable" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]  # no Hydra output folders


def _broken_copy(sample_dataset_dir, tmp_path) -> Path:
    ds = tmp_path / "ds"
    shutil.copytree(sample_dataset_dir, ds)
    lines = (ds / "train.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["image_path"] = "data/missing.png"
    lines[1] = json.dumps(row)
    lines.append('{"image_path": "data/sample_00000.png", "bounding_box_annotations": [{"annotation_label": "x"')
    (ds / "train.jsonl").write_text("\n".join(lines) + "\n")
    png = json.loads(lines[2])["image_path"]
    data = (ds / png).read_bytes()
    (ds / png).write_bytes(data[: len(data) // 2])  # truncated: only a full decode finds it
    return ds


def test_strict_errors_list_file_line_field_and_exit_1(sample_dataset_dir, tmp_path):
    ds = _broken_copy(sample_dataset_dir, tmp_path)
    result = check_data(f"jsonl={ds / 'train.jsonl'}", cwd=tmp_path)
    assert result.returncode == 1
    out = result.stdout
    assert "Traceback" not in out + result.stderr
    assert f"{ds / 'train.jsonl'}:2: field 'image_path'" in out and "missing.png" in out
    assert f"{ds / 'train.jsonl'}:19:" in out and "malformed JSON" in out
    assert f"{ds / 'train.jsonl'}:3: field 'image_path'" in out and "truncated" in out
    assert "ERRORS (3)" in out and "result: NOT usable" in out
    assert "images: 16" in out  # the summary still describes the usable part


def test_lenient_mode_counts_problems_and_is_usable(sample_dataset_dir, tmp_path):
    ds = _broken_copy(sample_dataset_dir, tmp_path)
    result = check_dataset(ds / "train.jsonl", strict=False)
    assert result.usable and not result.errors
    assert result.report.counts == {"image_not_found": 1, "malformed_json": 1, "unreadable_image": 1}
    assert result.summary["images"] == 16
    assert f"{ds / 'train.jsonl'}:19:" in format_result(result, ds / "train.jsonl")


def test_class_list_reports_dropped_labels(sample_dataset_dir):
    result = check_dataset(sample_dataset_dir / "dataset.jsonl", classes=["square", "circle"])
    assert result.usable and result.summary["classes"] == ["square", "circle"]
    assert list(result.summary["dropped_labels"]) == ["triangle"]
    text = format_result(result, "x")
    assert "1. square" in text and "2. circle" in text and "dropped labels (not in classes): triangle" in text


def test_data_dir_rule(sample_dataset_dir, tmp_path):
    text = (sample_dataset_dir / "val.jsonl").read_text().replace('"data/', '"elsewhere/')
    (tmp_path / "moved.jsonl").write_text(text)
    assert not check_dataset(tmp_path / "moved.jsonl").usable
    assert check_dataset(tmp_path / "moved.jsonl", data_dir=sample_dataset_dir / "data").usable


@pytest.mark.parametrize("content,message", [
    (b"", "no usable images"),
    (b'{"image_path": "a.png", "bounding_box_annotations": []}\n', "image not found"),
])
def test_unusable_files(tmp_path, content, message):
    (tmp_path / "a.jsonl").write_bytes(content)
    result = check_dataset(tmp_path / "a.jsonl")
    assert not result.usable and message in format_result(result, tmp_path / "a.jsonl")


def test_negatives_only_is_not_usable(sample_dataset_dir, tmp_path):
    lines = [t for t in (sample_dataset_dir / "dataset.jsonl").read_text().splitlines()
             if not json.loads(t)["bounding_box_annotations"]]
    (tmp_path / "neg.jsonl").write_text("\n".join(t.replace('"data/', f'"{sample_dataset_dir}/data/') for t in lines))
    result = check_dataset(tmp_path / "neg.jsonl", classes=["circle"])
    assert not result.usable and "no usable boxes" in str(result.errors[0])


def test_missing_file_and_missing_argument(tmp_path):
    result = check_data(f"jsonl={tmp_path / 'nope.jsonl'}", cwd=tmp_path)
    assert result.returncode == 1 and "annotation file not found" in result.stdout
    assert "Traceback" not in result.stderr
    result = check_data(cwd=tmp_path)
    assert result.returncode == 2 and "jsonl=PATH" in result.stderr


def test_bccd(bccd_dir):
    result = check_dataset(bccd_dir / "dataset.jsonl")
    assert result.usable and not result.report.counts
    summary = result.summary
    assert (summary["images"], len(summary["classes"]), summary["boxes"]) == (364, 3, 4886)
    assert summary["boxes_per_class"] == {"Platelets": 361, "RBC": 4153, "WBC": 372}
