"""records.load_records: every validation rule in both strict modes, path resolution, file-level quirks."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trainer.data import records as records_module
from trainer.data.records import DataValidationError, load_records, resolve_image_path


def box(label="cat", x0=0.1, y0=0.2, x1=0.5, y1=0.9, **extra):
    return {"annotation_label": label, "x_min_normalized": x0, "y_min_normalized": y0,
            "x_max_normalized": x1, "y_max_normalized": y1, **extra}


def line(image="img.png", boxes=None) -> str:
    return json.dumps({"image_path": image, "bounding_box_annotations": [box()] if boxes is None else boxes})


@pytest.fixture
def data(tmp_path):
    """A folder with a few (empty but present) image files; writes JSONL text into ``ann.jsonl``."""
    for name in ("img.png", "img2.png", "img3.png"):
        (tmp_path / name).write_bytes(b"x")

    def write(*lines: str | bytes, name="ann.jsonl", raw: bytes | None = None) -> Path:
        path = tmp_path / name
        if raw is None:
            raw = b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines)
        path.write_bytes(raw)
        return path

    return write


def without(mapping: dict, key: str) -> dict:
    return {k: v for k, v in mapping.items() if k != key}


B0 = "bounding_box_annotations[0]"
# (kind, JSONL line, field named in the error, whether the whole line is dropped when not strict)
LINE_CASES = [
    ("malformed_json", '{"image_path": "img.png", ', "", True),
    ("malformed_json", line(boxes=[]).replace("[]", "[NaN]"), "", True),
    ("malformed_json", line(boxes=[box(x0=float("inf"))]), "", True),  # json.dumps writes Infinity
    ("wrong_type", "[1, 2]", "", True),
    ("missing_field", json.dumps({"bounding_box_annotations": []}), "image_path", True),
    ("wrong_type", json.dumps({"image_path": 3, "bounding_box_annotations": []}), "image_path", True),
    ("wrong_type", json.dumps({"image_path": "  ", "bounding_box_annotations": []}), "image_path", True),
    ("missing_field", json.dumps({"image_path": "img.png"}), "bounding_box_annotations", True),
    ("wrong_type", line(boxes={}), "bounding_box_annotations", True),
    ("image_not_found", line(image="nope.png"), "image_path", True),
    ("wrong_type", line(boxes=["cat"]), B0, False),
    ("missing_field", line(boxes=[without(box(), "annotation_label")]), f"{B0}.annotation_label", False),
    ("missing_field", line(boxes=[without(box(), "y_max_normalized")]), f"{B0}.y_max_normalized", False),
    ("wrong_type", line(boxes=[box(label=7)]), f"{B0}.annotation_label", False),
    ("empty_label", line(boxes=[box(label="")]), f"{B0}.annotation_label", False),
    ("empty_label", line(boxes=[box(label="   ")]), f"{B0}.annotation_label", False),
    ("wrong_type", line(boxes=[box(x0="0.1")]), f"{B0}.x_min_normalized", False),
    ("wrong_type", line(boxes=[box(x0=None)]), f"{B0}.x_min_normalized", False),
    ("wrong_type", line(boxes=[box(x0=True)]), f"{B0}.x_min_normalized", False),
    ("non_finite", line(boxes=[box()]).replace("0.9", "1e400"), f"{B0}.y_max_normalized", False),
    ("out_of_range", line(boxes=[box(x1=1e300)]), f"{B0}.x_max_normalized", False),
    ("out_of_range", line(boxes=[box(y0=-0.5)]), f"{B0}.y_min_normalized", False),
    ("out_of_range", line(boxes=[box(x1=1.02)]), f"{B0}.x_max_normalized", False),
    ("degenerate_box", line(boxes=[box(x0=0.5, x1=0.5)]), B0, False),
    ("degenerate_box", line(boxes=[box(y0=0.9, y1=0.2)]), B0, False),
]


@pytest.mark.parametrize("kind,text,field,drops_line", LINE_CASES)
def test_strict_mode_raises_with_file_line_field(data, kind, text, field, drops_line):
    path = data(line(image="img2.png"), text)
    with pytest.raises(DataValidationError) as info:
        load_records(path, strict=True)
    (issue,) = info.value.issues
    assert (issue.source, issue.line, issue.field) == (path, 2, field)
    assert f"{path}:2" in str(info.value)


@pytest.mark.parametrize("kind,text,field,drops_line", LINE_CASES)
def test_lenient_mode_drops_and_counts(data, kind, text, field, drops_line):
    path = data(line(image="img2.png"), text)
    records, report = load_records(path, strict=False)
    assert report.counts[kind] == 1
    assert [w.line for w in report.warnings] == [2]
    if drops_line:
        assert [r.line for r in records] == [1]
    else:  # only the bad box goes; the image stays (as a negative here)
        assert [(r.line, len(r.boxes)) for r in records] == [(1, 1), (2, 0)]


def test_bad_box_keeps_the_good_boxes_of_its_line(data):
    path = data(line(boxes=[box("a"), box("b", x0=0.9, x1=0.1), box("c")]))
    (record,), report = load_records(path, strict=False)
    assert [b.label for b in record.boxes] == ["a", "c"]
    assert report.counts == {"degenerate_box": 1}


def test_strict_lists_every_problem_not_just_the_first(data):
    path = data(line(image="missing.png"), "{bad json", line(boxes=[box(x0=0.6, x1=0.2)]))
    with pytest.raises(DataValidationError) as info:
        load_records(path, strict=True)
    assert [i.line for i in info.value.issues] == [1, 2, 3]


def test_duplicate_line_strict_and_lenient(data):
    path = data(line(), line())
    with pytest.raises(DataValidationError, match="duplicate of line 1"):
        load_records(path, strict=True)
    records, report = load_records(path, strict=False)
    assert len(records) == 1 and report.counts["duplicate_line"] == 1


def test_same_image_on_two_lines_strict_and_lenient(data):
    path = data(line(boxes=[box("a")]), line(boxes=[box("b")]))
    with pytest.raises(DataValidationError, match="image already listed on line 1") as info:
        load_records(path, strict=True)
    assert info.value.issues[0].field == "image_path"
    records, report = load_records(path, strict=False)
    assert [r.boxes[0].label for r in records] == ["a"] and report.counts["duplicate_image"] == 1


def test_line_too_long_strict_and_lenient(data, monkeypatch):
    monkeypatch.setattr(records_module, "MAX_LINE_BYTES", 64)
    path = data(line(boxes=[]), line(image="img2.png", boxes=[box()] * 3))
    with pytest.raises(DataValidationError, match="longer than 64 bytes"):
        load_records(path, strict=True)
    records, report = load_records(path, strict=False)
    assert len(records) == 1 and report.counts["line_too_long"] == 1


def test_invalid_utf8_strict_and_lenient(data):
    path = data(line(), b'{"image_path": "img2.png\xff", "bounding_box_annotations": []}')
    with pytest.raises(DataValidationError, match="not valid UTF-8"):
        load_records(path, strict=True)
    records, report = load_records(path, strict=False)
    assert len(records) == 1 and report.counts["bad_encoding"] == 1


# Harmless quirks: counted warnings in both modes, never errors.
@pytest.mark.parametrize("strict", [True, False])
def test_bom_is_a_warning(data, strict):
    path = data(raw=b"\xef\xbb\xbf" + line().encode() + b"\n")
    records, report = load_records(path, strict=strict)
    assert len(records) == 1 and report.counts["bom"] == 1


@pytest.mark.parametrize("strict", [True, False])
def test_crlf_and_blank_lines_are_warnings(data, strict):
    path = data(raw=(line() + "\r\n\r\n   \n" + line(image="img2.png") + "\r\n").encode())
    records, report = load_records(path, strict=strict)
    assert [r.line for r in records] == [1, 4]
    assert report.counts["crlf"] == 3 and report.counts["blank_line"] == 2


@pytest.mark.parametrize("strict", [True, False])
def test_small_overshoot_is_clipped_and_counted(data, strict):
    path = data(line(boxes=[box(x0=-0.005, y1=1.009)]))
    (record,), report = load_records(path, strict=strict, clip_tolerance=0.01)
    assert record.boxes[0].xyxy == (0.0, 0.2, 0.5, 1.0)
    assert report.counts["clipped"] == 2


@pytest.mark.parametrize("strict", [True, False])
def test_label_whitespace_is_stripped_and_counted(data, strict):
    path = data(line(boxes=[box(label=" cat\t")]))
    (record,), report = load_records(path, strict=strict)
    assert record.boxes[0].label == "cat" and report.counts["label_whitespace"] == 1


def test_unicode_labels_and_paths_round_trip(tmp_path):
    (tmp_path / "bild ü.png").write_bytes(b"x")
    path = tmp_path / "ann.jsonl"
    path.write_text(json.dumps({"image_path": "bild ü.png", "bounding_box_annotations":
                                [box("Blutkörperchen"), box("红细胞"), box("🦠")]}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    (record,), report = load_records(path)
    assert [b.label for b in record.boxes] == ["Blutkörperchen", "红细胞", "🦠"]
    assert record.image_path.name == "bild ü.png" and not report.counts


def test_empty_file_has_no_records_and_no_error(data):
    records, report = load_records(data(raw=b""))
    assert records == [] and not report.counts


def test_image_without_boxes_is_kept(data):
    (record,), _ = load_records(data(line(boxes=[])))
    assert record.boxes == ()


def test_missing_annotation_file_is_a_data_error(tmp_path):
    with pytest.raises(DataValidationError, match="annotation file not found"):
        load_records(tmp_path / "absent.jsonl")


# Path resolution, in order: absolute; relative to the JSONL folder; relative to data_dir; base name in data_dir.
@pytest.fixture
def layout(tmp_path):
    (tmp_path / "ann").mkdir()
    (tmp_path / "images" / "sub").mkdir(parents=True)
    return tmp_path


def _resolve(layout, image_path, data_dir="images"):
    jsonl = layout / "ann" / "a.jsonl"
    return resolve_image_path(image_path, jsonl, layout / data_dir if data_dir else None)


def test_absolute_path_is_used_as_is(layout):
    target = layout / "images" / "x.png"
    target.write_bytes(b"x")
    found, tried = _resolve(layout, str(target))
    assert found == target and tried == [target]


def test_relative_to_jsonl_folder_comes_first(layout):
    (layout / "ann" / "sub").mkdir()
    (layout / "ann" / "sub" / "x.png").write_bytes(b"x")
    (layout / "images" / "sub" / "x.png").write_bytes(b"x")
    found, _ = _resolve(layout, "sub/x.png")
    assert found == layout / "ann" / "sub" / "x.png"


def test_relative_to_data_dir(layout):
    (layout / "images" / "sub" / "x.png").write_bytes(b"x")
    found, _ = _resolve(layout, "sub/x.png")
    assert found == layout / "images" / "sub" / "x.png"


def test_base_name_inside_data_dir(layout):
    (layout / "images" / "x.png").write_bytes(b"x")
    found, _ = _resolve(layout, "/elsewhere/old/machine/x.png")
    assert found == layout / "images" / "x.png"
    found, _ = _resolve(layout, "other/dir/x.png")
    assert found == layout / "images" / "x.png"


def test_unresolved_path_error_lists_every_path_tried(layout):
    jsonl = layout / "ann" / "a.jsonl"
    jsonl.write_text(line(image="sub/x.png") + "\n")
    with pytest.raises(DataValidationError) as info:
        load_records(jsonl, data_dir=layout / "images")
    message = str(info.value)
    assert f"{jsonl}:1" in message and "image_path" in message
    for tried in (layout / "ann" / "sub" / "x.png", layout / "images" / "sub" / "x.png", layout / "images" / "x.png"):
        assert str(tried) in message


def test_without_data_dir_only_absolute_and_jsonl_relative_are_tried(layout):
    found, tried = _resolve(layout, "x.png", data_dir=None)
    assert found is None and tried == [layout / "ann" / "x.png"]


def test_resolved_paths_are_absolute_whatever_the_cwd(layout, monkeypatch):
    (layout / "ann" / "x.png").write_bytes(b"x")
    (layout / "ann" / "a.jsonl").write_text(line(image="x.png") + "\n")
    monkeypatch.chdir(layout)
    (record,), _ = load_records(Path("ann/a.jsonl"))
    assert record.image_path.is_absolute() and record.image_path == layout / "ann" / "x.png"
    monkeypatch.chdir(os.sep)
    assert record.image_path.is_file()
