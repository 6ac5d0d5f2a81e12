"""One training process of a multi-process trial (started by ``trainer.tuning.launcher``):
``python -m torch.distributed.run --standalone --nproc_per_node N -m trainer.tuning.worker TRIAL_CONFIG RUN_DIR``.

Trains the config the trial wrote with the same engine as ``trainer/train.py``; the main process writes each
validation's report for the trial (``trainer.tuning.reports``). Exit codes as ``trainer/train.py``.
"""
from __future__ import annotations

import os
import signal
import sys

from omegaconf import OmegaConf

from trainer.engine import EXIT_PREEMPTED, train_exit_code
from trainer.tuning.launcher import death_signal_setter
from trainer.tuning.reports import REPORTS_ENV, ReportWriter


def main(config_path: str, run_dir: str) -> int:
    # When Tune stops the trial, Ray kills torchrun with the trial's worker process: stop then (checkpoint and
    # exit) instead of training on alone.
    death_signal_setter(signal.SIGTERM)()
    cfg = OmegaConf.load(config_path)
    reports = ReportWriter(os.environ[REPORTS_ENV])
    code = train_exit_code(cfg, report_fn=reports, run_dir=run_dir)
    if code == EXIT_PREEMPTED:
        # Only the trial ending (Tune stopped it) or dying sends the stop signal: its Ray worker may be gone
        # before it could delete the snapshots, and nobody reads them any more.
        reports.discard()
    return code


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
