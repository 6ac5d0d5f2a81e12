"""The reports of a multi-process trial, from its training processes to the Ray trial process.

The main training process appends one JSON line per validation to ``<reports dir>/reports.jsonl``: the epoch, the
metrics and a snapshot of the checkpoint it just wrote. The snapshot (hard links, so free) is what Tune copies to
its storage: the engine prunes its own checkpoints while training goes on, and the trial only reads the report
later. The directory is named by an environment variable, the one thing torchrun passes on to its workers. No Ray
here: the training processes never import it.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

REPORTS_ENV = "TRAINER_TUNE_REPORTS"
RECORDS_FILE = "reports.jsonl"


def finite_numbers(metrics: Mapping) -> dict[str, float]:
    """The metrics Tune can compare: finite numbers (an AP is NaN when a split has no boxes of any class)."""
    return {name: float(value) for name, value in metrics.items()
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)}


def snapshot(source: Path, target: Path) -> Path:
    """A copy of the directory ``source`` at ``target`` that deleting ``source`` does not affect: hard links (the
    engine never rewrites a checkpoint file, it only writes new ones), or real copies where links fail."""
    try:
        shutil.copytree(source, target, copy_function=os.link)
    except OSError:  # another file system, or one without hard links
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
    return target


class ReportWriter:
    """The engine's ``report_fn`` in a training process (it is only called on the main one)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def __call__(self, epoch: int, metrics: Mapping, checkpoint_dir: str | os.PathLike | None) -> None:
        if not self.directory.is_dir():  # deleted: the trial has ended and reads nothing more
            return
        copy = snapshot(Path(checkpoint_dir), self.directory / f"epoch_{epoch:04d}") if checkpoint_dir else None
        record = {"epoch": epoch, "metrics": finite_numbers(metrics), "checkpoint": str(copy) if copy else None}
        # One write of a whole line: the reader never takes a line before its newline is there.
        with open(self.directory / RECORDS_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def discard(self) -> None:
        """Deletes the reports and snapshots, for when the trial will not read them (it has ended)."""
        shutil.rmtree(self.directory, ignore_errors=True)


class ReportReader:
    """The trial's side: the records appended since the last call."""

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / RECORDS_FILE
        self.offset = 0

    def new_records(self) -> list[dict]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:  # nothing reported yet
            return []
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        return [json.loads(line) for line in complete.splitlines()]
