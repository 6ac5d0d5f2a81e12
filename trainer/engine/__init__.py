"""Training engine: ``train(cfg, report_fn=None) -> dict`` (see ``loop.py``) and its building blocks."""
from trainer.engine.checkpoint import CheckpointWriteError
from trainer.engine.loop import TrainingDiverged, train, train_exit_code
from trainer.engine.signals import EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_PREEMPTED

__all__ = ["EXIT_BAD_INPUT", "EXIT_DIVERGED", "EXIT_PREEMPTED", "CheckpointWriteError", "TrainingDiverged", "train",
           "train_exit_code"]
