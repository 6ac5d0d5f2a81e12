"""Helpers of the fault-injection suite: hostile files, real subprocesses with bounded run time."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CHECK_DATA = REPO / "trainer" / "check_data.py"
# The training-run helpers of the integration tests (run train.py, wait for a checkpoint, compare final weights).
sys.path.insert(0, str(REPO / "tests" / "integration"))


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


@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, size_mb: int) -> Iterator[Path | None]:
    """A real ``size_mb`` file system at ``mount_point`` (needs root and mount rights), unmounted afterwards; yields
    None where mounting is not allowed."""
    mount_point.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mount_point)],
        capture_output=True, timeout=30).returncode == 0
    try:
        yield mount_point if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "--lazy", str(mount_point)], check=True, timeout=30)


def fill_up(filesystem: Path, leave_bytes: int) -> Path:
    """Writes a file that leaves only ``leave_bytes`` free on ``filesystem``."""
    stats = os.statvfs(filesystem)
    filler = filesystem / "filler"
    with filler.open("wb") as out:
        remaining = max(stats.f_bavail * stats.f_frsize - leave_bytes, 0)
        chunk = b"\0" * (1 << 20)
        while remaining > 0:
            remaining -= out.write(chunk[:remaining])
    return filler


def kill_tree(process: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 60) -> None:
    """Sends ``sig`` to ``process`` and every process under it. torchrun starts each rank in its own session, so
    signalling the launcher's process group would leave the ranks running; a machine that dies takes them all."""
    import psutil

    try:
        root = psutil.Process(process.pid)
        tree = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        tree = []
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(sig)
    psutil.wait_procs(tree, timeout=timeout)
    process.wait(timeout=timeout)
