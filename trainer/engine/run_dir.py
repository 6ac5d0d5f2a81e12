"""One run directory for all processes, and the run's log file.

Hydra resolves ``${now:...}`` separately in every process, so processes started a second apart would
disagree on ``outputs/YYYY-MM-DD/HH-MM-SS``. ``configs/train.yaml`` therefore gives only the launch's
rank 0 (``RANK`` from torchrun / ``accelerate launch``) the timestamped directory and Hydra's ``.hydra/``
snapshot; every other rank gets ``.`` and no snapshot, and learns the real directory from rank 0 by a
broadcast once the process group is up (:func:`resolve_run_dir`). An explicit ``hydra.run.dir=PATH``
(what the SLURM script passes) is the same on every rank anyway.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def launch_rank() -> int:
    """Global rank as set by the launcher, before any process group exists (0 for a plain ``python``)."""
    return int(os.environ.get("RANK", "0"))


def main_rank_only(value, other=None):
    """Hydra resolver ``${main_rank_only:VALUE[,OTHER]}``: VALUE on the launch's rank 0, OTHER elsewhere."""
    return value if launch_rank() == 0 else other


def register_resolvers() -> None:
    """Call before ``@hydra.main`` runs (``trainer/train.py`` does it at import)."""
    if not OmegaConf.has_resolver("main_rank_only"):
        OmegaConf.register_new_resolver("main_rank_only", main_rank_only)


def resolve_run_dir(accelerator, run_dir: str | Path | None = None) -> Path:
    """The main process's run directory, known to every process (collective).

    ``run_dir`` if given, else Hydra's output directory, else the working directory (e.g. a Ray Tune trial).
    """
    from accelerate.utils import broadcast_object_list

    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else os.getcwd()
    shared = [str(Path(run_dir).resolve())]
    if accelerator.num_processes > 1:
        broadcast_object_list(shared, from_process=0)
    path = Path(shared[0])
    if accelerator.is_main_process:
        path.mkdir(parents=True, exist_ok=True)
    return path


def write_config_snapshot(run_dir: Path, cfg: DictConfig) -> None:
    """``.hydra/config.yaml`` as Hydra writes it, for runs started without Hydra (``train(cfg)`` from Python)."""
    target = run_dir / ".hydra" / "config.yaml"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")


class _RunLogHandlers:
    """The handlers this run added to the root logger, removed again by :meth:`close` (runs can be repeated
    in one process: tests, Ray Tune trials)."""

    def __init__(self, handlers: list[logging.Handler]):
        self.handlers = handlers

    def close(self) -> None:
        root = logging.getLogger()
        for handler in self.handlers:
            root.removeHandler(handler)
            handler.close()


def setup_logging(run_dir: Path, accelerator) -> _RunLogHandlers:
    """Main process: INFO to the console and ``RUN/train.log``. Other processes: warnings to the console,
    prefixed with their rank."""
    root = logging.getLogger()
    if accelerator.is_main_process:
        handlers = [logging.StreamHandler(sys.stdout), logging.FileHandler(run_dir / "train.log", encoding="utf-8")]
        fmt, level = LOG_FORMAT, logging.INFO
    else:
        handlers = [logging.StreamHandler(sys.stderr)]
        fmt, level = f"[rank {accelerator.process_index}] {LOG_FORMAT}", logging.WARNING
    for handler in handlers:
        handler.setFormatter(logging.Formatter(fmt))
        handler.setLevel(level)
        root.addHandler(handler)
    root.setLevel(min(root.level or logging.INFO, logging.INFO))
    return _RunLogHandlers(handlers)
