"""Where a sweep lives: ``<root>/YYYY-MM-DD/HH-MM-SS/`` holding the Ray experiment, one folder per trial, results.

``sweep.yaml`` sets ``sweep.output_dir: ${sweep_dir:${sweep.root},${resume}}`` and Hydra's run dir to it, so a new
sweep gets a fresh timestamped folder while ``resume=true`` lands back in the newest sweep under the root.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

# Written at the start of every sweep: it marks a folder as a sweep and keeps the config that a resume reuses.
SWEEP_CONFIG_FILE = "sweep_config.yaml"


def latest_sweep(root: str | Path) -> Path | None:
    """The newest ``root/DATE/TIME`` folder that holds a sweep (the names sort by time)."""
    sweeps = sorted(path.parent for path in Path(root).glob(f"*/*/{SWEEP_CONFIG_FILE}"))
    return sweeps[-1] if sweeps else None


def resolve_sweep_dir(root: str, resume: bool) -> str:
    if resume:
        latest = latest_sweep(root)
        if latest is None:
            raise FileNotFoundError(
                f"resume=true but {Path(root).resolve()} holds no sweep ({SWEEP_CONFIG_FILE} in */*/); "
                f"pass sweep.output_dir=<the sweep folder> to pick one"
            )
        return str(latest)
    return str(Path(root) / datetime.now().strftime("%Y-%m-%d/%H-%M-%S"))


def register_resolver() -> None:
    # use_cache: Hydra's run dir and the task both resolve it, and both must see the same timestamp.
    if not OmegaConf.has_resolver("sweep_dir"):
        OmegaConf.register_new_resolver("sweep_dir", resolve_sweep_dir, use_cache=True)
