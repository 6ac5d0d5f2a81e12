"""Hostile annotation files through the real entry points: every problem is reported with file and line (strict) or
dropped and counted (lenient), never a traceback, and an oversized line never gets read into memory whole."""
from __future__ import annotations

import json
import re

import pytest

from fault_tools import (REPO, assert_no_traceback, check_data, good_box, jsonl_line, peak_rss_increase_mb, run_python,
                      write_image)
from trainer.data.check import check_dataset
from trainer.data.records import MAX_LINE_BYTES, DataValidationError, load_records

pytestmark = pytest.mark.faults

UNICODE_LABEL = "čáp bílý 🐦"  # non-ASCII letters, an emoji and inner spaces: a valid label, kept as written

# (line text with IMG standing for that line's own image, expected error kind, text the message must contain).
# Each line names its own image so a line's problem is never mistaken for a duplicate image.
HOSTILE_LINES = [
    (jsonl_line("IMG"), None, None),
    ('{"image_path": "IMG", "bounding_box_annotations": [', "malformed_json", "malformed JSON"),
    (json.dumps({"image_path": 42, "bounding_box_annotations": []}), "wrong_type", "image_path must be a non-empty"),
    (jsonl_line("IMG", [good_box(x0="0.1")]), "wrong_type", "coordinate must be a number"),
    (jsonl_line("IMG").replace("0.1", "NaN"), "malformed_json", "NaN is not valid JSON"),
    (jsonl_line("IMG").replace("0.8", "Infinity"), "malformed_json", "Infinity is not valid JSON"),
    (jsonl_line("IMG", [good_box(x0=-0.5)]), "out_of_range", "outside [0, 1]"),
    (jsonl_line("IMG", [good_box(x0=0.7, x1=0.2)]), "degenerate_box", "x_min must be < x_max"),
    (jsonl_line("IMG", [good_box(y1=1.5)]), "out_of_range", "outside [0, 1]"),
    (jsonl_line("IMG", [good_box(x1=1e300)]), "out_of_range", "outside [0, 1]"),
    (jsonl_line("IMG", [good_box(label="   ")]), "empty_label", "label is empty"),
    (jsonl_line("IMG", [good_box(label=f"  {UNICODE_LABEL} ")]), None, None),  # whitespace stripped: a warning
    (json.dumps(["not", "an", "object"]), "wrong_type", "must be a JSON object"),
]
DUPLICATE_OF = 1  # the last line repeats line 1 word for word


@pytest.fixture
def hostile_jsonl(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    lines = []
    for number, (text, _, _) in enumerate(HOSTILE_LINES, start=1):
        write_image(data / f"img{number}.png", seed=number)
        lines.append(text.replace("IMG", f"data/img{number}.png"))
    lines.append(lines[DUPLICATE_OF - 1])
    path = tmp_path / "hostile.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def expected_errors() -> dict[int, tuple[str, str]]:
    errors = {n: (kind, text) for n, (_, kind, text) in enumerate(HOSTILE_LINES, start=1) if kind}
    errors[len(HOSTILE_LINES) + 1] = ("duplicate_line", f"duplicate of line {DUPLICATE_OF}")
    return errors


def test_strict_cli_names_file_and_line_of_every_problem(hostile_jsonl, tmp_path):
    result = check_data(f"jsonl={hostile_jsonl}", cwd=tmp_path)
    assert_no_traceback(result)
    assert result.returncode == 1
    out = result.stdout
    errors_block = out[out.index("ERRORS ("):]
    for line, (_, text) in expected_errors().items():
        reported = [row for row in errors_block.splitlines() if row.strip().startswith(f"{hostile_jsonl}:{line}:")]
        assert reported, f"line {line} ({text}) not reported:\n{out}"
        assert any(text in row for row in reported), f"line {line}: expected {text!r} in {reported}"
    # Only the two good lines may be missing from the errors.
    reported_lines = {int(m) for m in re.findall(rf"{re.escape(str(hostile_jsonl))}:(\d+):", errors_block)}
    assert reported_lines == set(expected_errors())
    assert "result: NOT usable" in out


def test_lenient_cli_drops_and_counts_and_keeps_the_good_data(hostile_jsonl, tmp_path):
    summary_path = tmp_path / "summary.json"
    result = check_data(f"jsonl={hostile_jsonl}", "strict=false", f"summary_json={summary_path}", cwd=tmp_path)
    assert_no_traceback(result)
    assert result.returncode == 0, result.stdout
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    kinds = [kind for kind, _ in expected_errors().values()]
    assert summary["warnings"] == {kind: kinds.count(kind) for kind in set(kinds)} | {"label_whitespace": 1}
    # Unparseable lines (malformed JSON, an int path, a non-object) and the duplicate are dropped; a line whose
    # only box is bad stays as an image without boxes.
    assert summary["images"] == len(HOSTILE_LINES) - kinds.count("malformed_json") - 2
    assert summary["boxes"] == 2 and summary["classes"] == sorted(["circle", UNICODE_LABEL])
    assert summary["negatives"] == summary["images"] - 2
    assert f"{hostile_jsonl}:{len(HOSTILE_LINES) + 1}:" in result.stdout  # warnings name file and line too


def test_bom_crlf_and_unicode_are_warnings_not_errors(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"ok {i}.png", seed=i)  # a space in the file name as well
    lines = [jsonl_line(f"ok {i}.png", [good_box(label=UNICODE_LABEL if i else "circle")]) for i in range(3)]
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n")
    summary_path = tmp_path / "summary.json"
    result = check_data(f"jsonl={path}", f"summary_json={summary_path}", cwd=tmp_path)
    assert_no_traceback(result)
    assert result.returncode == 0, result.stdout
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    assert summary["warnings"] == {"bom": 1, "crlf": 3}
    assert summary["images"] == 3 and summary["boxes_per_class"] == {"circle": 1, UNICODE_LABEL: 2}
    assert f"{path}:1:" in result.stdout and "byte-order mark" in result.stdout


def test_empty_file_is_a_clear_error_naming_the_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    records, report = load_records(path)
    assert records == [] and not report.counts
    result = check_dataset(path)
    assert not result.usable and any("no usable images" in str(e) and str(path) in str(e) for e in result.errors)


def _write_with_giant_line(path, data_dir, size_bytes: int) -> None:
    """Line 2 is valid JSON whose label is ``size_bytes`` long, written in chunks (never built in memory)."""
    for i in range(3):
        write_image(data_dir / f"big{i}.png", seed=i)
    head = '{"image_path": "data/big1.png", "bounding_box_annotations": [{"annotation_label": "'
    tail = '", "x_min_normalized": 0.1, "y_min_normalized": 0.1, "x_max_normalized": 0.5, "y_max_normalized": 0.5}]}'
    chunk = "x" * (1 << 20)
    with path.open("w", encoding="utf-8") as out:
        out.write(jsonl_line("data/big0.png") + "\n" + head)
        for _ in range(size_bytes // len(chunk)):
            out.write(chunk)
        out.write(tail + "\n" + jsonl_line("data/big2.png") + "\n")


def test_100_mb_line_is_refused_with_bounded_memory(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    path = tmp_path / "giant.jsonl"
    _write_with_giant_line(path, data, 100 << 20)
    assert path.stat().st_size > 100 << 20

    result = check_data(f"jsonl={path}", cwd=tmp_path)
    assert_no_traceback(result)
    assert result.returncode == 1
    assert f"{path}:2:" in result.stdout and f"line longer than {MAX_LINE_BYTES} bytes" in result.stdout
    assert "images: 2" in result.stdout  # lines 1 and 3 still parse: numbering survived the skipped line

    # Reading it holds at most one MAX_LINE_BYTES chunk of the line (16 MB), not 100 MB or its decoded copies.
    increase_mb, out = peak_rss_increase_mb(f"""
        try:
            records.load_records({str(path)!r})
        except records.DataValidationError as error:
            print(error)
    """, cwd=tmp_path)
    assert f"{path}:2:" in out
    assert increase_mb < 48, f"peak memory grew by {increase_mb:.0f} MB reading a 100 MB line"


def test_train_refuses_hostile_data_with_file_and_line_and_exit_2(hostile_jsonl, tmp_path):
    run_dir = tmp_path / "run"
    result = run_python([str(REPO / "trainer" / "train.py"), f"dataset.train_jsonl={hostile_jsonl}",
                         "model=custom_detector", "training.num_workers=0", "logger=none", f"hydra.run.dir={run_dir}"],
                        cwd=tmp_path, timeout=180)
    assert_no_traceback(result)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    output = result.stdout + result.stderr + (run_dir / "train.log").read_text()
    for line in expected_errors():
        assert f"{hostile_jsonl}:{line}:" in output, f"line {line} not named:\n{output[-4000:]}"
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "best_model.pth").exists()


def test_lenient_loader_never_returns_a_bad_box(hostile_jsonl):
    records, report = load_records(hostile_jsonl, strict=False)
    with pytest.raises(DataValidationError):
        load_records(hostile_jsonl, strict=True)
    boxes = [box for record in records for box in record.boxes]
    assert len(boxes) == 2 and sum(report.counts.values()) == len(expected_errors()) + 1
    for box in boxes:
        assert 0.0 <= box.x_min < box.x_max <= 1.0 and 0.0 <= box.y_min < box.y_max <= 1.0
        assert box.label == box.label.strip() and box.label
