"""What one trial gets: the CPUs and GPUs Ray reserves for it, and how many training processes it starts.

``processes: null`` means one process per GPU (at least one). One process drives one GPU, so with GPUs the two
must agree; without GPUs any number of CPU (gloo) processes may share the trial's CPUs.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass

from trainer.tuning.space import SweepConfigError

WHERE = "sweep.resources_per_trial"


@dataclass(frozen=True)
class TrialResources:
    cpu: float
    gpu: float
    processes: int

    def ray_request(self) -> dict[str, float]:
        """What ``tune.with_resources`` reserves: one bundle, so all of a trial's GPUs are on one node."""
        return {"cpu": self.cpu, "gpu": self.gpu}


def _number(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0:
        raise SweepConfigError(f"{WHERE}.{key} must be a number >= 0, got {value!r}")
    return float(value)


def trial_resources(settings: Mapping) -> TrialResources:
    """``sweep.resources_per_trial`` checked: raises ``SweepConfigError`` naming the key and the fix."""
    cpu = _number(settings.get("cpu") or 0, "cpu")
    gpu = _number(settings.get("gpu") or 0, "gpu")
    processes = settings.get("processes")
    if processes is None:
        processes = max(1, int(gpu))
    elif isinstance(processes, bool) or not isinstance(processes, numbers.Integral) or processes < 1:
        raise SweepConfigError(f"{WHERE}.processes must be a whole number >= 1 (or null: one per GPU), "
                               f"got {processes!r}")
    if gpu > 1 and gpu != int(gpu):
        raise SweepConfigError(f"{WHERE}.gpu={gpu:g}: more than one GPU per trial must be a whole number "
                               f"(each training process drives one whole GPU)")
    if 0 < gpu < 1 and processes != 1:
        raise SweepConfigError(f"{WHERE}.gpu={gpu:g} shares one GPU: it takes processes=1, got {processes}")
    if gpu >= 1 and processes != int(gpu):
        raise SweepConfigError(f"{WHERE}.processes={processes} with gpu={int(gpu)}: one process drives one GPU, "
                               f"so processes must equal gpu (or be null)")
    return TrialResources(cpu=cpu, gpu=gpu, processes=int(processes))
