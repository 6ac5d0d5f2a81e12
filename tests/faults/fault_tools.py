"""Helpers of the fault-injection suite: hostile files, real subprocesses with bounded run time."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CHECK_DATA = REPO / "trainer" / "check_data.py"


def good_box(label: str = "circle", x0: float = 0.1, y0: float = 0.2, x1: float = 0.6, y1: float = 0.8) -> dict:
    return {"annotation_label": label, "x_min_normalized": x0, "y_min_normalized": y0,
            "x_max_normalized": x1, "y_max_normalized": y1}


def jsonl_line(image: str, boxes: list | None = None) -> str:
    return json.dumps({"image_path": image, "bounding_box_annotations": [good_box()] if boxes is None else boxes},
                      ensure_ascii=False)


def write_image(path: Path, width: int = 32, height: int = 24, seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def run_python(args: list[str], cwd: Path, timeout: float = 120, env: dict | None = None,
               ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def check_data(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python trainer/check_data.py OVERRIDES`` as a user runs it."""
    return run_python([str(CHECK_DATA), *overrides], cwd=cwd)


def assert_no_traceback(result: subprocess.CompletedProcess) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-4000:]


def peak_rss_increase_mb(snippet: str, cwd: Path, timeout: float = 120) -> tuple[float, str]:
    """Runs ``snippet`` in a fresh interpreter (after importing torch and the data layer) and returns how much its
    peak resident memory grew while the snippet ran, in MB, and what it printed."""
    code = "\n".join([
        "import resource",
        "import torch",
        "from trainer.data import images, records",
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss",
        textwrap.dedent(snippet).strip(),
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss",
        "print(f'PEAK_INCREASE_KB={after - before}')",
    ])
    result = run_python(["-c", code], cwd=cwd, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    marker = [line for line in result.stdout.splitlines() if line.startswith("PEAK_INCREASE_KB=")]
    assert marker, result.stdout
    return int(marker[-1].split("=")[1]) / 1024, result.stdout
