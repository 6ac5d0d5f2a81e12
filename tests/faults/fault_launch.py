"""``python tests/faults/fault_launch.py [train overrides]``: runs ``trainer/train.py`` with one fault injected.

The fault is chosen by environment variables (counted in each process; rank 0 only for checkpoint faults, since
rank 0 writes the shared files):

- ``FAULT_KILL_IN_CHECKPOINT_WRITE=N``: SIGKILL this process in its Nth checkpoint write, after every file is in the
  temporary directory and before it is renamed into place.
- ``FAULT_ENOSPC_IN_CHECKPOINT_WRITE=N``: the Nth checkpoint write fails half-way through a file with
  ``OSError(ENOSPC)`` (for machines where a small file system cannot be mounted).
- ``FAULT_NONFINITE_STEPS=3,4,5``: the input images are NaN in these training forward passes (1-based), so every
  activation (and the normalisation layers' running statistics) and the loss are NaN.
"""
from __future__ import annotations

import errno
import os
import runpy
import signal
import sys
from pathlib import Path

TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "trainer" / "train.py"


def _nth_call(n: int, action, original):
    calls = 0

    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == n:
            return action(original, *args, **kwargs)
        return original(*args, **kwargs)

    return wrapper


def _install_checkpoint_faults() -> None:
    from trainer.engine import checkpoint

    if os.environ.get("RANK", "0") != "0":
        return
    if "FAULT_KILL_IN_CHECKPOINT_WRITE" in os.environ:
        def die(original, root):
            original(root)  # the files are complete and on disk, the rename has not happened
            os.kill(os.getpid(), signal.SIGKILL)

        checkpoint.fsync_tree = _nth_call(int(os.environ["FAULT_KILL_IN_CHECKPOINT_WRITE"]), die,
                                          checkpoint.fsync_tree)
    if "FAULT_ENOSPC_IN_CHECKPOINT_WRITE" in os.environ:
        manager = checkpoint.CheckpointManager
        real_save = checkpoint.torch.save

        def disk_full(original, self, *args, **kwargs):
            def half_then_enospc(obj, path, *a, **k):
                real_save(obj, path, *a, **k)
                Path(path).write_bytes(Path(path).read_bytes()[:64])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

            checkpoint.torch.save = half_then_enospc
            try:
                return original(self, *args, **kwargs)
            finally:
                checkpoint.torch.save = real_save

        manager.save = _nth_call(int(os.environ["FAULT_ENOSPC_IN_CHECKPOINT_WRITE"]), disk_full, manager.save)


def _install_nonfinite_loss() -> None:
    from trainer.engine import loop

    steps = {int(s) for s in os.environ.get("FAULT_NONFINITE_STEPS", "").split(",") if s.strip()}
    if not steps:
        return
    build_model = loop.build_model
    training_forwards = 0

    def build_poisoned_model(*args, **kwargs):
        model = build_model(*args, **kwargs)

        # A subclass rather than a patched attribute: copies of the model (the EMA) stay self-consistent.
        class Poisoned(type(model)):
            def forward(self, images, *f_args, **f_kwargs):
                nonlocal training_forwards
                if self.training:
                    training_forwards += 1
                    if training_forwards in steps:  # NaN pixels: every activation and the loss become NaN
                        images = [image * float("nan") for image in images]
                return super().forward(images, *f_args, **f_kwargs)

        model.__class__ = Poisoned
        return model

    loop.build_model = build_poisoned_model


if __name__ == "__main__":
    _install_checkpoint_faults()
    _install_nonfinite_loss()
    sys.argv = [str(TRAIN_SCRIPT), *sys.argv[1:]]
    runpy.run_path(str(TRAIN_SCRIPT), run_name="__main__")
