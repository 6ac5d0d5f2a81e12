"""Parse and validate the JSONL annotation format.

One JSON object per line::

    {"image_path": "data/0001.jpg",
     "bounding_box_annotations": [{"annotation_label": "cat",
        "x_min_normalized": 0.1, "y_min_normalized": 0.2,
        "x_max_normalized": 0.5, "y_max_normalized": 0.9}]}

Validation policy (``strict``):
- Problems that would change or drop data (malformed JSON, missing fields, wrong types, NaN/inf,
  x_min >= x_max, boxes outside the image beyond ``clip_tolerance``, empty labels, unresolvable
  image paths, duplicate lines, an image listed on two lines) are a :class:`DataValidationError`
  naming file, line, field and value when ``strict=True``; when ``strict=False`` the box (or line)
  is dropped and the problem is counted.
- Harmless problems are always counted warnings, never errors: a UTF-8 BOM, blank lines, CRLF line
  ends, coordinates outside [0, 1] by at most ``clip_tolerance`` (clipped), labels with surrounding
  whitespace (stripped).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

COORD_FIELDS = ("x_min_normalized", "y_min_normalized", "x_max_normalized", "y_max_normalized")
MAX_LINE_BYTES = 16 * 1024 * 1024  # a line longer than this is refused instead of parsed


@dataclass(frozen=True)
class BoxAnnotation:
    label: str
    x_min: float
    y_min: float
    x_max: float
    y_max: float

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x_min, self.y_min, self.x_max, self.y_max)


@dataclass(frozen=True)
class Record:
    """One image and its boxes, coordinates normalized to [0, 1]."""

    image_path: Path
    boxes: tuple[BoxAnnotation, ...]
    source: Path  # the JSONL file
    line: int  # 1-based line number in ``source``


@dataclass(frozen=True)
class DataIssue:
    source: Path
    line: int
    field: str
    value: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else str(self.source)
        fld = f" field {self.field!r}" if self.field else ""
        val = f" (value: {self.value})" if self.value else ""
        return f"{where}:{fld}{val}: {self.message}" if fld or val else f"{where}: {self.message}"


class DataValidationError(ValueError):
    """Bad input data; the message names the file, line, field and value."""

    def __init__(self, issues: list[DataIssue]):
        self.issues = list(issues)
        shown = "\n  ".join(str(i) for i in self.issues[:20])
        more = f"\n  ... and {len(self.issues) - 20} more" if len(self.issues) > 20 else ""
        super().__init__(f"invalid dataset ({len(self.issues)} problem(s)):\n  {shown}{more}")


@dataclass
class ValidationReport:
    """What validation found. ``warnings`` were fixed or dropped; ``counts`` tallies them by kind."""

    warnings: list[DataIssue] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)

    def warn(self, kind: str, issue: DataIssue) -> None:
        self.counts[kind] += 1
        self.warnings.append(issue)

    def merge(self, other: "ValidationReport") -> None:
        self.warnings.extend(other.warnings)
        self.counts.update(other.counts)


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def resolve_image_path(image_path: str, jsonl_path: Path, data_dir: Path | None) -> tuple[Path | None, list[Path]]:
    """Resolution order: absolute; relative to the JSONL's folder; relative to data_dir; base name in data_dir."""
    raw = Path(image_path)
    candidates: list[Path] = []
    if raw.is_absolute():
        candidates.append(raw)
    else:
        candidates.append(jsonl_path.parent / raw)
        if data_dir is not None:
            candidates.append(data_dir / raw)
    if data_dir is not None:
        candidates.append(data_dir / raw.name)
    tried: list[Path] = []
    for candidate in candidates:
        if candidate in tried:
            continue
        tried.append(candidate)
        if candidate.is_file():
            # Absolute (not symlink-resolved): valid whatever the working directory becomes later.
            return Path(os.path.abspath(candidate)), tried
    return None, tried


class _LineProblem(Exception):
    """Raised inside line parsing: the whole line is unusable."""

    def __init__(self, kind: str, fld: str, value: str, message: str):
        super().__init__(message)
        self.kind, self.field, self.value, self.message = kind, fld, value, message


def _parse_box(raw: object, index: int,
               clip_tolerance: float) -> tuple[BoxAnnotation | None, list[tuple[str, str, str, str, bool]]]:
    """Returns (box or None, problems). Each problem: (kind, field, value, message, fatal_for_box)."""
    where = f"bounding_box_annotations[{index}]"
    problems: list[tuple[str, str, str, str, bool]] = []
    if not isinstance(raw, dict):
        return None, [("wrong_type", where, _short(raw), "a box must be a JSON object", True)]
    label = raw.get("annotation_label")
    if "annotation_label" not in raw:
        return None, [("missing_field", f"{where}.annotation_label", "", "missing field", True)]
    if not isinstance(label, str):
        return None, [("wrong_type", f"{where}.annotation_label", _short(label), "label must be a string", True)]
    if not label.strip():
        return None, [("empty_label", f"{where}.annotation_label", _short(label), "label is empty", True)]
    if label != label.strip():
        problems.append(("label_whitespace", f"{where}.annotation_label", _short(label),
                         "surrounding whitespace stripped from label", False))
        label = label.strip()
    coords = []
    for name in COORD_FIELDS:
        if name not in raw:
            return None, [("missing_field", f"{where}.{name}", "", "missing field", True)]
        value = raw[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, [("wrong_type", f"{where}.{name}", _short(value), "coordinate must be a number", True)]
        value = float(value)
        if not math.isfinite(value):
            return None, [("non_finite", f"{where}.{name}", _short(value), "coordinate is NaN or infinite", True)]
        if value < -clip_tolerance or value > 1.0 + clip_tolerance:
            return None, [("out_of_range", f"{where}.{name}", _short(value),
                           f"coordinate outside [0, 1] by more than the clip tolerance {clip_tolerance}", True)]
        if value < 0.0 or value > 1.0:
            problems.append(("clipped", f"{where}.{name}", _short(value), "coordinate clipped to [0, 1]", False))
            value = min(max(value, 0.0), 1.0)
        coords.append(value)
    x_min, y_min, x_max, y_max = coords
    if x_min >= x_max or y_min >= y_max:
        return None, problems + [("degenerate_box", where, _short(coords),
                                  "x_min must be < x_max and y_min < y_max", True)]
    return BoxAnnotation(label, x_min, y_min, x_max, y_max), problems


def load_records(
    jsonl_path: str | Path,
    data_dir: str | Path | None = None,
    strict: bool = True,
    clip_tolerance: float = 0.01,
) -> tuple[list[Record], ValidationReport]:
    """Read and validate one JSONL file. Raises :class:`DataValidationError` listing every fatal problem."""
    jsonl_path = Path(jsonl_path)
    data_dir = Path(data_dir) if data_dir is not None else None
    report = ValidationReport()
    errors: list[DataIssue] = []
    if not jsonl_path.is_file():
        raise DataValidationError([DataIssue(jsonl_path, 0, "", "", "annotation file not found")])

    def problem(kind: str, line: int, fld: str, value: str, message: str, fatal: bool) -> None:
        issue = DataIssue(jsonl_path, line, fld, value, message)
        if fatal and strict:
            errors.append(issue)
        else:
            report.warn(kind, issue)

    records: list[Record] = []
    seen_lines: dict[bytes, int] = {}  # line digest -> line number
    seen_images: dict[Path, int] = {}
    with open(jsonl_path, "rb") as fh:
        for line_no, raw_line, too_long in _read_lines(fh):
            if line_no == 1 and raw_line.startswith(b"\xef\xbb\xbf"):
                report.warn("bom", DataIssue(jsonl_path, 1, "", "", "UTF-8 byte-order mark ignored"))
                raw_line = raw_line[3:]
            if raw_line.endswith(b"\r\n"):
                report.counts["crlf"] += 1  # harmless; counted without one warning per line
            if too_long:
                problem("line_too_long", line_no, "", "", f"line longer than {MAX_LINE_BYTES} bytes", True)
                continue
            stripped = raw_line.strip()
            if not stripped:
                report.warn("blank_line", DataIssue(jsonl_path, line_no, "", "", "blank line ignored"))
                continue
            digest = hashlib.blake2b(stripped, digest_size=16).digest()
            if digest in seen_lines:
                problem("duplicate_line", line_no, "", "", f"duplicate of line {seen_lines[digest]}", True)
                continue
            seen_lines[digest] = line_no
            try:
                record = _parse_line(stripped, line_no, jsonl_path, data_dir, clip_tolerance, problem)
            except _LineProblem as exc:
                problem(exc.kind, line_no, exc.field, exc.value, exc.message, True)
                continue
            if record.image_path in seen_images:
                # Two lines for one image would count its objects twice in training and evaluation.
                problem("duplicate_image", line_no, "image_path", _short(str(record.image_path)),
                        f"image already listed on line {seen_images[record.image_path]}", True)
                continue
            seen_images[record.image_path] = line_no
            records.append(record)
    if errors:
        raise DataValidationError(errors)
    return records, report


def _read_lines(fh) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, line, too long?). Never holds more than MAX_LINE_BYTES of one line in memory."""
    line_no = 0
    while True:
        raw_line = fh.readline(MAX_LINE_BYTES + 1)
        if not raw_line:
            return
        line_no += 1
        too_long = len(raw_line) > MAX_LINE_BYTES
        while too_long and not raw_line.endswith(b"\n"):  # skip the rest of an oversized line
            raw_line = fh.readline(MAX_LINE_BYTES + 1)
            if not raw_line:
                break
        yield line_no, raw_line, too_long


def _parse_line(text: bytes, line_no: int, jsonl_path: Path, data_dir: Path | None, clip_tolerance: float,
                problem) -> Record:
    try:
        obj = json.loads(text.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise _LineProblem("bad_encoding", "", "", f"line is not valid UTF-8 ({exc.reason})") from None
    except ValueError as exc:  # json.JSONDecodeError and NaN/Infinity literals
        raise _LineProblem("malformed_json", "", _short(text.decode("utf-8", "replace")),
                           f"malformed JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _LineProblem("wrong_type", "", _short(obj), "each line must be a JSON object")
    if "image_path" not in obj:
        raise _LineProblem("missing_field", "image_path", "", "missing field")
    image_path = obj["image_path"]
    if not isinstance(image_path, str) or not image_path.strip():
        raise _LineProblem("wrong_type", "image_path", _short(image_path), "image_path must be a non-empty string")
    if "bounding_box_annotations" not in obj:
        raise _LineProblem("missing_field", "bounding_box_annotations", "",
                           "missing field (use [] for an image without objects)")
    raw_boxes = obj["bounding_box_annotations"]
    if not isinstance(raw_boxes, list):
        raise _LineProblem("wrong_type", "bounding_box_annotations", _short(raw_boxes), "must be a list")
    resolved, tried = resolve_image_path(image_path, jsonl_path, data_dir)
    if resolved is None:
        raise _LineProblem("image_not_found", "image_path", _short(image_path),
                           "image not found; tried: " + ", ".join(str(p) for p in tried))
    boxes = []
    for index, raw in enumerate(raw_boxes):
        box, problems = _parse_box(raw, index, clip_tolerance)
        for kind, fld, value, message, fatal in problems:
            problem(kind, line_no, fld, value, message, fatal)
        if box is not None:
            boxes.append(box)
    return Record(image_path=resolved, boxes=tuple(boxes), source=jsonl_path, line=line_no)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")
