"""Broken, tiny, huge and vanishing images, and crashing data-loader workers: a clear error naming the file (or,
when not strict, the image dropped and counted), never a hang, never gigabytes allocated for a hostile header."""
from __future__ import annotations

import io
import os
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from fault_tools import assert_no_traceback, check_data, good_box, jsonl_line, peak_rss_increase_mb, write_image
from trainer.data.builder import build_datasets
from trainer.data.check import check_dataset
from trainer.data.classes import ClassMap
from trainer.data.dataset import DetectionDataset
from trainer.data.images import ImageReadError
from trainer.data.records import DataValidationError, load_records
from trainer.data.transforms import build_transforms
from trainer.engine.data import build_train_loader

pytestmark = pytest.mark.faults

HUGE_SIDE = 50_000  # 2.5e9 pixels: 7.5 GB as RGB if anything decoded it


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def huge_png_header(path, side: int = HUGE_SIDE) -> None:
    """A well-formed PNG whose header claims ``side`` x ``side`` RGB pixels, with a short zero-filled pixel stream:
    the shape of a decompression bomb, 1 KB on disk."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 65536, 9)
    chunks = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


def corrupt_jpeg(path) -> None:
    """A JPEG with an intact header (its size reads fine) and zeroed Huffman tables: only decoding finds it.

    (Damage inside the entropy-coded pixel data is often *recovered* by libjpeg, which prints "Corrupt JPEG data"
    and returns a partly wrong image, as every JPEG pipeline does; this case is one the decoder must refuse.)
    """
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(buffer, "JPEG")
    data = buffer.getvalue()
    tables, scan = data.index(b"\xff\xc4"), data.index(b"\xff\xda")
    path.write_bytes(data[: tables + 4] + bytes(scan - tables - 4) + data[scan:])


def truncated_png(path) -> None:
    write_image(path, 64, 48, seed=5)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# name -> (writer, words the reason must contain)
BROKEN = {
    "corrupt.jpg": (corrupt_jpeg, "corrupt"),
    "truncated.png": (truncated_png, "truncated"),
    "zero.png": (lambda p: p.write_bytes(b""), "0 bytes"),
    "text.png": (lambda p: p.write_text("these are not pixels\n"), "not a readable image"),
    "huge.png": (huge_png_header, f"{HUGE_SIDE * HUGE_SIDE} pixels"),
}


@pytest.fixture
def broken_dataset(tmp_path):
    """``images.jsonl``: two good images, one 1x1 image, then one line per broken file (line number -> name)."""
    data = tmp_path / "data"
    data.mkdir()
    write_image(data / "good0.png", seed=0)
    write_image(data / "good1.png", seed=1)
    Image.fromarray(np.full((1, 1, 3), 200, dtype=np.uint8)).save(data / "tiny.png")
    lines = [jsonl_line("data/good0.png"), jsonl_line("data/good1.png"),
             jsonl_line("data/tiny.png", [good_box(x0=0.0, y0=0.0, x1=1.0, y1=1.0)])]
    broken_lines = {}
    for name, (write, _) in BROKEN.items():
        write(data / name)
        lines.append(jsonl_line(f"data/{name}"))
        broken_lines[len(lines)] = name
    (tmp_path / "images.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "images.jsonl", broken_lines


def test_cli_names_file_line_and_reason_of_every_broken_image(broken_dataset, tmp_path):
    jsonl, broken_lines = broken_dataset
    result = check_data(f"jsonl={jsonl}", cwd=tmp_path)
    assert_no_traceback(result)
    assert result.returncode == 1
    errors = result.stdout[result.stdout.index("ERRORS ("):].splitlines()
    for line, name in broken_lines.items():
        rows = [row for row in errors if row.strip().startswith(f"{jsonl}:{line}: field 'image_path'")]
        assert len(rows) == 1 and name in rows[0] and BROKEN[name][1] in rows[0], (name, errors)
    assert f"ERRORS ({len(broken_lines)})" in result.stdout  # the 1x1 image is not an error
    assert "images: 3" in result.stdout and "1x1: 1" in result.stdout


def test_lenient_drops_and_counts_broken_images_and_keeps_the_tiny_one(broken_dataset):
    jsonl, broken_lines = broken_dataset
    result = check_dataset(jsonl, strict=False)
    assert result.usable and result.report.counts == {"unreadable_image": len(broken_lines)}
    assert result.summary["images"] == 3
    # Training-time loading reads headers only: four of the five are caught there, the corrupt body by decoding.
    with pytest.raises(DataValidationError) as info:
        build_datasets({"train_jsonl": str(jsonl), "val_split": 0.0})
    named = {issue.line for issue in info.value.issues}
    assert named == set(broken_lines) - {line for line, name in broken_lines.items() if name == "corrupt.jpg"}
    bundle = build_datasets({"train_jsonl": str(jsonl), "val_split": 0.0, "strict": False})
    assert len(bundle.train) == 4 and bundle.reports["train"].counts["unreadable_image"] == len(broken_lines) - 1


def test_huge_header_is_refused_without_allocating(tmp_path):
    path = tmp_path / "huge.png"
    huge_png_header(path)
    assert path.stat().st_size < 2048
    increase_mb, out = peak_rss_increase_mb(f"""
        for read in (images.image_size, images.read_image):
            try:
                read({str(path)!r})
            except images.ImageReadError as error:
                print("refused:", error)
    """, cwd=tmp_path)
    assert out.count("refused:") == 2 and f"{HUGE_SIDE * HUGE_SIDE} pixels" in out and str(path) in out
    assert increase_mb < 32, f"peak memory grew by {increase_mb:.0f} MB for a {HUGE_SIDE}x{HUGE_SIDE} header"


@pytest.mark.parametrize("policy", ["none", "flip", "default"])
def test_one_pixel_image_trains_under_every_augmentation(tmp_path, policy):
    """A 1x1 image is valid data: every policy returns a 1-pixel-ish image with its box, and a model's training
    step on it gives finite losses."""
    from trainer.models import build_model

    Image.fromarray(np.full((1, 1, 3), 200, dtype=np.uint8)).save(tmp_path / "tiny.png")
    (tmp_path / "a.jsonl").write_text(jsonl_line("tiny.png", [good_box(x0=0.0, y0=0.0, x1=1.0, y1=1.0)]) + "\n")
    records, _ = load_records(tmp_path / "a.jsonl")
    dataset = DetectionDataset(records, ClassMap(["circle"]), build_transforms(policy))
    for seed in range(40):  # enough draws to hit every random branch of the default policy
        torch.manual_seed(seed)
        image, target = dataset[0]
        assert image.dtype == torch.float32 and image.shape[0] == 3 and min(image.shape[1:]) >= 1
        assert len(target["boxes"]) == len(target["labels"]) <= 1
    model = build_model({"name": "custom_detector", "weights": None, "weights_backbone": None, "min_size": 64,
                         "max_size": 64, "base_channels": 8, "fpn_channels": 16}, num_classes=1)
    model.train()
    torch.manual_seed(0)
    image, target = dataset[0]
    losses = model([image], [{"boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"]}])
    assert all(torch.isfinite(value) for value in losses.values()), losses


def first_loader_error(loader) -> tuple[BaseException, list[int]]:
    """Iterates ``loader`` until it raises; returns the error (without its traceback, which would keep the
    loader's worker processes alive) and the image ids loaded before it."""
    seen = []
    try:
        for _, targets in loader:
            seen.extend(t["image_id"] for t in targets)
    except Exception as error:  # the test asserts the type
        # Drop every reference to the iterator's frames so its workers are shut down now, not at some later GC.
        error.__context__ = error.__cause__ = None
        return error.with_traceback(None), seen
    raise AssertionError(f"the loader finished without an error after images {seen}")


class _DatasetDeletingAnImage(torch.utils.data.Dataset):
    """Deletes ``victim`` just before item ``at`` is read: the file vanishes while the loader is running."""

    def __init__(self, dataset, at: int, victim):
        self.dataset, self.at, self.victim = dataset, at, victim

    def __len__(self):
        return len(self.dataset)

    def image_sizes(self):
        return self.dataset.image_sizes()

    def __getitem__(self, index):
        if index == self.at:
            self.victim.unlink(missing_ok=True)
        return self.dataset[index]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("num_workers", [0, 2])
def test_image_deleted_mid_training_is_a_clear_error_naming_it(image_dir, num_workers):
    lines = [jsonl_line(f"ok{i}.png") for i in range(4)]
    (image_dir / "a.jsonl").write_text("\n".join(lines) + "\n")
    records, _ = load_records(image_dir / "a.jsonl")
    dataset = DetectionDataset(records, ClassMap(["circle"]), build_transforms("none"))
    victim = records[2].image_path
    loader, sampler, _ = build_train_loader(
        _DatasetDeletingAnImage(dataset, at=2, victim=victim), batch_size=1, accumulation_steps=1, seed=0,
        num_replicas=1, rank=0, num_workers=num_workers, group_factor=0)
    sampler.set_epoch(0)
    error, _ = first_loader_error(loader)
    assert isinstance(error, (ImageReadError, RuntimeError))
    assert str(victim) in str(error) and "No such file or directory" in str(error), error
    if num_workers == 0:
        assert isinstance(error, ImageReadError) and error.path == victim


class _CrashingDataset(torch.utils.data.Dataset):
    """Kills the worker process that loads item ``at`` (as the OOM killer or a segfaulting decoder would)."""

    def __init__(self, dataset, at: int):
        self.dataset, self.at = dataset, at

    def __len__(self):
        return len(self.dataset)

    def image_sizes(self):
        return self.dataset.image_sizes()

    def __getitem__(self, index):
        if index == self.at and torch.utils.data.get_worker_info() is not None:
            os._exit(9)
        return self.dataset[index]


@pytest.mark.timeout(120)
def test_worker_process_crash_raises_in_the_main_process_not_a_hang(image_dir):
    (image_dir / "a.jsonl").write_text("\n".join(jsonl_line(f"ok{i}.png") for i in range(4)) + "\n")
    records, _ = load_records(image_dir / "a.jsonl")
    dataset = _CrashingDataset(DetectionDataset(records, ClassMap(["circle"]), build_transforms("none")), at=3)
    loader, sampler, _ = build_train_loader(dataset, batch_size=1, accumulation_steps=1, seed=0, num_replicas=1,
                                            rank=0, num_workers=2, group_factor=0)
    sampler.set_epoch(0)
    error, seen = first_loader_error(loader)
    # Either the loader's own error, or, when the worker died right after queueing a batch, the failed fetch of
    # that batch's tensors (they travel as file descriptors fetched from the worker that sent them; seen once on a
    # loaded 2-core machine). Both end the epoch with an error in the main process.
    fetch_from_dead_worker = isinstance(error, (ConnectionResetError, ConnectionRefusedError))
    assert fetch_from_dead_worker or (
        isinstance(error, RuntimeError)
        and re.search(r"DataLoader worker \(pid\(s\)? ?\d+\) exited unexpectedly", str(error))), error
    assert 3 not in seen
