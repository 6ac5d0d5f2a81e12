"""Training checkpoints that are never half-written, and the portable ``best_model.pth``.

Layout under ``RUN/checkpoints/``::

    epoch0003-step000040/     one complete training state (see ``CheckpointManager.save``)
    last -> epoch0003-step000040
    .tmp-<name>/              a save in progress (ignored; removed by the next save)

A save is written into ``.tmp-<name>``, fsynced, renamed to ``<name>`` (atomic) and only then is the
``last`` symlink swapped (atomic ``os.replace``). A kill at any moment therefore leaves ``last``
pointing at a complete checkpoint. All processes must call ``save`` and ``load`` (collective).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

LAST_LINK = "last"
TRAINER_STATE_FILE = "trainer_state.json"
TMP_PREFIX = ".tmp-"
NO_RESUME = ("never", "none", "null", "false", "")


def checkpoint_name(epoch: int, step_in_epoch: int) -> str:
    """``epoch`` is the epoch in progress and ``step_in_epoch`` the optimizer steps done in it."""
    return f"epoch{epoch:04d}-step{step_in_epoch:06d}"


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's entry to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(directory) / name)
        fsync_path(Path(directory))


def atomic_write_bytes(path: Path, write) -> None:
    """``write(tmp_path)`` then fsync and rename over ``path``: readers see the old or the new file, never half."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write_bytes(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def is_checkpoint(path: Path) -> bool:
    return (Path(path) / TRAINER_STATE_FILE).is_file()


def find_resume_checkpoint(resume: Any, run_dir: Path) -> Path | None:
    """``resume=auto``: ``run_dir/checkpoints/last`` if it exists; ``resume=PATH``: a checkpoint directory or a
    run directory (its last checkpoint); ``resume=null``/``never``: start fresh."""
    if resume is None or str(resume).strip().lower() in NO_RESUME:
        return None
    if str(resume) == "auto":
        last = Path(run_dir) / "checkpoints" / LAST_LINK
        return last.resolve() if is_checkpoint(last) else None
    path = Path(str(resume)).expanduser()
    for candidate in (path, path / LAST_LINK, path / "checkpoints" / LAST_LINK):
        if is_checkpoint(candidate):
            return candidate.resolve()
    raise FileNotFoundError(f"resume={resume!r}: no checkpoint there (expected {TRAINER_STATE_FILE} in it, "
                            f"in {path / LAST_LINK} or in {path / 'checkpoints' / LAST_LINK})")


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (e.g. disk full); the previous one is untouched."""


class CheckpointManager:
    """Saves/loads ``accelerator.save_state`` plus extra state dicts and a JSON trainer state, keeping the last K."""

    def __init__(self, accelerator, root: Path, keep_last: int = 2):
        if keep_last < 1:
            raise ValueError(f"training.keep_checkpoints must be >= 1, got {keep_last}")
        self.accelerator = accelerator
        self.root = Path(root)
        self.keep_last = keep_last

    def save(self, name: str, extra_states: dict[str, dict], trainer_state: dict) -> Path:
        """Write ``<name>/``: Accelerate's state (model, optimizer, grad scaler, per-process RNG), one
        ``<key>.pt`` per entry of ``extra_states`` (plain state dicts) and ``trainer_state.json``."""
        acc = self.accelerator
        tmp, final = self.root / f"{TMP_PREFIX}{name}", self.root / name
        if acc.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(f"{TMP_PREFIX}*"):  # left by a save that was killed
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)
            tmp.mkdir()
        acc.wait_for_everyone()
        # Every process writes its own RNG state, the main one everything else.
        self._raise_if_any_failed(self._attempt(acc.save_state, str(tmp)), name)
        failure = None
        if acc.is_main_process:
            failure = self._attempt(self._finish, tmp, final, extra_states, trainer_state)
        self._raise_if_any_failed(failure, name)
        return final

    def _finish(self, tmp: Path, final: Path, extra_states: dict[str, dict], trainer_state: dict) -> None:
        for key, state in extra_states.items():
            torch.save(state, tmp / f"{key}.pt")
        # Written last: its presence marks a complete checkpoint.
        (tmp / TRAINER_STATE_FILE).write_text(json.dumps(trainer_state, indent=1), encoding="utf-8")
        fsync_tree(tmp)
        if final.exists():  # the same training position saved again: the content is equivalent
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, final)
        fsync_path(self.root)
        self._point_last_at(final)
        self._prune()

    @staticmethod
    def _attempt(fn, *args) -> str | None:
        try:
            fn(*args)
        # Disk full surfaces as OSError, or RuntimeError from torch's zip writer: report it on every
        # process instead of leaving the others waiting at the next barrier.
        except Exception as error:
            return f"{type(error).__name__}: {error}"
        return None

    def _raise_if_any_failed(self, failure: str | None, name: str) -> None:
        """Collective: every process learns whether any process failed, so none waits forever."""
        from accelerate.utils import gather_object

        failures = [f for f in gather_object([failure]) if f] if self.accelerator.num_processes > 1 else \
            [f for f in [failure] if f]
        if failures:
            last = (self.root / LAST_LINK).resolve() if (self.root / LAST_LINK).exists() else "none yet"
            raise CheckpointWriteError(f"could not write checkpoint {self.root / name}: {failures[0]}. "
                                       f"The previous checkpoint is intact: {last}")

    def _point_last_at(self, target: Path) -> None:
        link = self.root / LAST_LINK
        tmp_link = self.root / f"{TMP_PREFIX}{LAST_LINK}"
        tmp_link.unlink(missing_ok=True)
        os.symlink(target.name, tmp_link)  # relative: the run directory can be moved
        os.replace(tmp_link, link)
        fsync_path(self.root)

    def _prune(self) -> None:
        keep = (self.root / LAST_LINK).resolve()
        saved = [p for p in self.root.iterdir()
                 if p.is_dir() and not p.is_symlink() and not p.name.startswith(TMP_PREFIX) and is_checkpoint(p)]
        # Oldest first; names (zero-padded epoch/step) break ties of coarse file-system timestamps.
        saved.sort(key=lambda p: ((p / TRAINER_STATE_FILE).stat().st_mtime_ns, p.name))
        for old in saved[: max(len(saved) - self.keep_last, 0)]:
            if old.resolve() != keep:
                # Renamed first (atomic): a kill while deleting leaves a .tmp- directory (removed by the next
                # save), never a half-deleted checkpoint that still looks complete.
                trash = old.with_name(f"{TMP_PREFIX}{old.name}")
                os.rename(old, trash)
                shutil.rmtree(trash, ignore_errors=True)

    def load(self, checkpoint_dir: Path, extra_keys: list[str]) -> tuple[dict, dict[str, dict]]:
        """Restore Accelerate's state in place; return ``(trainer_state, {key: state dict})``."""
        checkpoint_dir = Path(checkpoint_dir)
        self.accelerator.load_state(str(checkpoint_dir))
        extras = {key: torch.load(checkpoint_dir / f"{key}.pt", map_location="cpu", weights_only=True)
                  for key in extra_keys if (checkpoint_dir / f"{key}.pt").is_file()}
        trainer_state = json.loads((checkpoint_dir / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
        return trainer_state, extras
