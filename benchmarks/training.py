"""Suite 1, training overhead: the engine's real step loop vs a bare PyTorch loop, side by side in one process.

"Ours" is ``trainer.engine.loop.Trainer.train_epoch`` (Accelerate, loss all-reduce, non-finite checks, gradient
clipping, LR schedule, EMA, progress bar and tracker logging), set up exactly as ``trainer/train.py`` sets it up.
The bare loop has the same model (same initial weights), dataset, batch size and optimizer, and nothing else.
Start-up (model build, data indexing) and validation are outside the timed region.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmarks.common import SMALL_INPUT, compose_train_config, interleaved, median, paired_ratio, sample_data
from trainer.data.dataset import collate_fn
from trainer.engine.loop import Trainer, build_accelerator
from trainer.engine.optim import build_optimizer
from trainer.engine.signals import StopRequest
from trainer.models import build_model


@dataclass
class Settings:
    steps: int = 4            # optimizer steps per timed round (one engine epoch)
    repeats: int = 3          # at least this many timed rounds per side (interleaved) ...
    min_seconds: float = 150.0  # ... and more, up to max_rounds, until this much time has passed (per model):
    max_rounds: int = 80        # a round's ratio varies by ~10% on a shared 2-core VM; the median of 80 by ~1.5%
    batch_size: int = 4
    image_size: tuple[int, int] = (320, 240)
    mixed_precision: str = "no"


def engine_trainer(model_name: str, data_dir: Path, run_dir: Path, settings: Settings,
                   extra: list[str] = ()) -> Trainer:
    """The engine's Trainer after ``setup()`` (what ``train(cfg)`` runs before its first epoch)."""
    cfg = compose_train_config([
        f"model={model_name}", *SMALL_INPUT.get(model_name, []),
        f"dataset.dataset_dir={data_dir}", "dataset.val_split=0", "dataset.augmentation=flip", "logger=none",
        f"training.batch_size={settings.batch_size}", "training.num_workers=0",
        "training.checkpoint_every_steps=0", "training.eval_every=0",
        f"training.mixed_precision={settings.mixed_precision}", *extra])
    trainer = Trainer(cfg, build_accelerator(cfg.training), run_dir, report_fn=None)
    trainer.setup()
    return trainer


def engine_round(trainer: Trainer, stop: StopRequest) -> None:
    """One epoch of the engine's step loop (``steps_per_epoch`` optimizer steps), then the next epoch starts."""
    if not trainer.train_epoch(stop):
        raise RuntimeError("a stop signal interrupted the benchmark")
    trainer.state.start_epoch(trainer.state.epoch + 1)


class BareLoop:
    """Plain PyTorch: DataLoader, forward, sum of losses, backward, optimizer step. No Accelerate, EMA or logs."""

    def __init__(self, trainer: Trainer):
        torch.manual_seed(int(trainer.cfg.seed))  # the engine builds its model right after the same seeding
        self.model = build_model(trainer.cfg.model, trainer.class_map.num_classes).to(trainer.accelerator.device)
        self.model.train()
        self.optimizer = build_optimizer(self.model, trainer.lr, trainer.t, trainer.backbone_lr_factor)
        self.device = trainer.accelerator.device
        self.steps = trainer.steps_per_epoch
        self.loader = DataLoader(trainer.train_set, batch_size=int(trainer.t.batch_size), shuffle=True,
                                 drop_last=True, collate_fn=collate_fn, num_workers=0)
        self.autocast = trainer.accelerator.autocast  # mixed precision on a GPU: the same autocast region

    def round(self) -> None:
        batches = iter(self.loader)
        for _ in range(self.steps):
            images, targets = next(batches)
            images = [image.to(self.device) for image in images]
            targets = [{k: v.to(self.device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
            with self.autocast():
                loss = sum(self.model(images, targets).values())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()


def measure_model(model_name: str, data_dir: Path, settings: Settings) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = engine_trainer(model_name, data_dir, Path(run_dir), settings)
        bare = BareLoop(trainer)
        stop = StopRequest()  # not installed: a benchmark is not preempted
        images_per_round = trainer.steps_per_epoch * int(trainer.t.batch_size)
        times = interleaved({"ours": lambda: engine_round(trainer, stop), "bare": bare.round},
                            repeats=settings.repeats, min_seconds=settings.min_seconds,
                            max_repeats=settings.max_rounds)
    return {"model": model_name, "batch_size": settings.batch_size, "steps_per_round": trainer.steps_per_epoch,
            "rounds": len(times["ours"]), "ours_img_s": images_per_round / median(times["ours"]),
            "bare_img_s": images_per_round / median(times["bare"]),
            "ratio": paired_ratio(times["bare"], times["ours"]),  # ours img/s / bare img/s, round by round
            "ours_round_s": times["ours"], "bare_round_s": times["bare"]}


def run(models: list[str], work_dir: Path, settings: Settings) -> dict:
    logging.getLogger("trainer").setLevel(logging.WARNING)
    data_dir = sample_data(work_dir / "train_data", num_images=settings.steps * settings.batch_size,
                           image_size=settings.image_size)
    rows = [measure_model(name, data_dir, settings) for name in models]
    return {"target": "ours >= 0.97x bare", "threads": torch.get_num_threads(), "rows": rows}


def to_markdown(result: dict) -> str:
    lines = ["img/s are medians over the rounds; ours / bare is the median of the per-round ratios (each round of "
             "ours ran right next to one of the bare loop).", "",
             "| model | batch | rounds x steps | ours img/s | bare img/s | ours / bare | target >= 0.97 |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['rounds']} x {r['steps_per_round']} | "
                     f"{r['ours_img_s']:.2f} | {r['bare_img_s']:.2f} | "
                     f"{r['ratio']:.3f}x | {'yes' if r['ratio'] >= 0.97 else 'no'} |")
    return "\n".join(lines)
