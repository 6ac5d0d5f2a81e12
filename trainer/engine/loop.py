"""The training loop: Accelerate (DDP, mixed precision), scaled LR schedule, EMA, validation, checkpoints.

``train(cfg)`` is what ``trainer/train.py`` runs and what the sweep calls per trial. It returns a summary
dict whose ``status`` is ``completed``, ``early_stopped`` or ``preempted`` (a stop signal arrived: a
checkpoint was written and ``resume=auto`` continues). A loss that stays non-finite raises
:class:`TrainingDiverged`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from trainer.data.builder import build_datasets
from trainer.data.images import ImageReadError
from trainer.data.records import DataValidationError
from trainer.engine.checkpoint import CheckpointManager, atomic_torch_save, checkpoint_name, find_resume_checkpoint
from trainer.engine.data import build_train_loader, to_device
from trainer.engine.ema import ModelEMA
from trainer.engine.optim import (backbone_lr_factor, build_optimizer, build_schedule, build_scheduler,
                                  clip_gradients, scaled_learning_rate)
from trainer.engine.reporting import plot_curves, write_metrics_csv
from trainer.engine.run_dir import resolve_run_dir, setup_logging, write_config_snapshot
from trainer.engine.signals import (EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_PREEMPTED, StopRequest,
                                    stop_signals_blocked)
from trainer.engine.trackers import start_trackers
from trainer.engine.val_loss import validation_loss
from trainer.evaluation.distributed import evaluate_model
from trainer.evaluation.metrics import scalar_metrics
from trainer.models import build_model, weights_plan

logger = logging.getLogger(__name__)

ReportFn = Callable[[int, dict, Path], None]
MIXED_PRECISION = ("no", "fp16", "bf16")
CHECKPOINT_FORMAT_VERSION = 1


# Bad input named in the message (file, line, field): reported without a traceback.
USER_ERRORS = (DataValidationError, ImageReadError, FileNotFoundError)


class TrainingDiverged(RuntimeError):
    """The loss was non-finite for too many consecutive optimizer steps."""


@dataclasses.dataclass
class TrainingState:
    """Everything besides tensors that a resumed run needs; stored as JSON in each checkpoint."""

    epoch: int = 0  # epoch in progress (0-based)
    step_in_epoch: int = 0  # optimizer steps done in this epoch
    global_step: int = 0  # optimizer steps done (skipped non-finite steps included: the schedule counts them)
    num_processes: int = 1
    global_batch_size: int = 0
    epoch_loss_sums: dict = dataclasses.field(default_factory=dict)  # sums over this epoch's good steps
    epoch_good_steps: int = 0
    epoch_images: int = 0
    epoch_seconds: float = 0.0
    nonfinite_total: int = 0
    nonfinite_consecutive: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    evals_since_best: int = 0
    history: list = dataclasses.field(default_factory=list)  # one dict per finished epoch
    finished: str | None = None  # "completed" / "early_stopped" once training is over
    class_names: list = dataclasses.field(default_factory=list)

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.step_in_epoch = epoch, 0
        self.epoch_loss_sums, self.epoch_good_steps, self.epoch_images, self.epoch_seconds = {}, 0, 0, 0.0


def resolve_mixed_precision(requested: str | None) -> str:
    """``null`` takes the launcher's choice (``accelerate launch --mixed_precision``); fp16 needs a GPU, so on a
    CPU it falls back to bf16 with a warning."""
    value = str(requested if requested is not None else os.environ.get("ACCELERATE_MIXED_PRECISION", "no")).lower()
    if value not in MIXED_PRECISION:
        raise ValueError(f"training.mixed_precision={requested!r}: choose one of {MIXED_PRECISION} (or null)")
    if value == "fp16" and not torch.cuda.is_available():
        logger.warning("mixed_precision=fp16 needs a GPU; using bf16 autocast on the CPU instead")
        return "bf16"
    return value


def build_accelerator(training: DictConfig):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    ddp = DistributedDataParallelKwargs(find_unused_parameters=bool(training.find_unused_parameters))
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    # Under torchrun on a machine without a GPU, Accelerate only sets up gloo DDP when told to use the CPU;
    # otherwise every process would silently train alone.
    cpu = bool(training.cpu) or (launched > 1 and not torch.cuda.is_available())
    # Gradient accumulation is done by the loop (no_sync + one optimizer step per group of batches), so an
    # epoch's step count and the LR schedule do not depend on how Accelerate counts batches.
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(training.mixed_precision), cpu=cpu,
                              kwargs_handlers=[ddp])
    if accelerator.num_processes != launched:
        raise RuntimeError(f"the launcher started {launched} processes (WORLD_SIZE) but Accelerate set up "
                           f"{accelerator.num_processes}; check the accelerate config / launch flags")
    return accelerator


def train(cfg: DictConfig, report_fn: ReportFn | None = None, run_dir: str | Path | None = None) -> dict:
    """Train ``cfg.model`` on ``cfg.dataset`` with ``cfg.training``; see ``configs/train.yaml``.

    ``report_fn(epoch, metrics, checkpoint_dir)`` is called on the main process after each validation.
    ``run_dir`` defaults to Hydra's output directory (or the working directory outside Hydra).
    """
    accelerator = build_accelerator(cfg.training)
    run_dir = resolve_run_dir(accelerator, run_dir)
    log_handlers = setup_logging(run_dir, accelerator)
    stop = StopRequest().install()
    try:
        return Trainer(cfg, accelerator, run_dir, report_fn).run(stop)
    except (*USER_ERRORS, TrainingDiverged) as error:
        logger.error("%s", error)  # a message for people, no traceback
        raise
    except Exception:
        logger.exception("training failed")
        raise
    finally:
        stop.uninstall()
        accelerator.end_training()
        log_handlers.close()


def train_exit_code(cfg: DictConfig, report_fn: ReportFn | None = None, run_dir: str | Path | None = None) -> int:
    """``train`` for a command: 0 finished or early-stopped, ``EXIT_PREEMPTED`` stopped by a signal after a
    checkpoint, ``EXIT_DIVERGED``, ``EXIT_BAD_INPUT``. ``train`` has already logged the reason."""
    try:
        result = train(cfg, report_fn=report_fn, run_dir=run_dir)
    except TrainingDiverged:
        return EXIT_DIVERGED
    except USER_ERRORS:
        return EXIT_BAD_INPUT
    return EXIT_PREEMPTED if result["status"] == "preempted" else 0


class Trainer:
    def __init__(self, cfg: DictConfig, accelerator, run_dir: Path, report_fn: ReportFn | None):
        self.cfg = cfg
        self.t = cfg.training
        self.accelerator = accelerator
        self.run_dir = run_dir
        self.report_fn = report_fn
        self.is_main = accelerator.is_main_process

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        from accelerate.utils import set_seed

        acc, t, cfg = self.accelerator, self.t, self.cfg
        logging.getLogger("accelerate").setLevel(logging.WARNING)
        if str(t.best_metric_mode) not in ("max", "min"):
            raise ValueError(f"training.best_metric_mode={t.best_metric_mode!r}: use max or min")
        if self.is_main:
            write_config_snapshot(self.run_dir, cfg)
        data = build_datasets(cfg.dataset, classes=cfg.get("classes"), seed=int(cfg.seed))
        self.train_set, self.val_set, self.class_map = data.train, data.val, data.class_map
        if self.is_main:
            self.class_map.save(self.run_dir / "classes.json")

        set_seed(int(cfg.seed))  # identical initial weights on every process and for every world size
        model = build_model(cfg.model, self.class_map.num_classes)
        self.accum = int(t.gradient_accumulation_steps)
        if self.accum < 1:
            raise ValueError(f"training.gradient_accumulation_steps must be >= 1, got {self.accum}")
        self.global_batch = int(t.batch_size) * acc.num_processes * self.accum
        self.lr = scaled_learning_rate(float(t.learning_rate), self.global_batch, int(t.base_batch_size))
        self.loader, self.sampler, self.steps_per_epoch = build_train_loader(
            self.train_set, batch_size=int(t.batch_size), accumulation_steps=self.accum, seed=int(cfg.seed),
            num_replicas=acc.num_processes, rank=acc.process_index, num_workers=int(t.num_workers),
            group_factor=int(t.aspect_ratio_group_factor), pin_memory=acc.device.type == "cuda")
        if t.sync_batchnorm and acc.num_processes > 1:
            if acc.device.type == "cpu":
                raise ValueError("training.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm has no CPU kernel)")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.backbone_lr_factor = backbone_lr_factor(t, weights_plan(cfg.model).pretrained)
        optimizer = build_optimizer(model, self.lr, t, self.backbone_lr_factor)
        self.schedule = build_schedule(t, self.steps_per_epoch)
        self.scheduler = build_scheduler(optimizer, self.schedule)  # never prepared: see optim.py
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.unwrapped = acc.unwrap_model(self.model)  # the bare module (DDP wraps it); looked up once, used per step
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]  # clipped every step
        self.buffers = list(self.model.buffers())
        self.buffer_backup = [buffer.detach().clone() for buffer in self.buffers]  # see optimizer_step
        ema_cfg = cfg.ema
        self.ema = (ModelEMA(self.unwrapped, float(ema_cfg.decay), float(ema_cfg.tau))
                    if ema_cfg.enabled else None)
        set_seed(int(cfg.seed) + acc.process_index)  # per-process randomness from here on
        self.checkpoints = CheckpointManager(acc, self.run_dir / "checkpoints", int(t.keep_checkpoints))
        self.state = TrainingState(num_processes=acc.num_processes, global_batch_size=self.global_batch,
                                   class_names=list(self.class_map.names))
        start_trackers(acc, cfg, self.run_dir)
        self.log_recipe()

    def log_recipe(self) -> None:
        t, acc = self.t, self.accelerator
        logger.info("run directory: %s", self.run_dir)
        logger.info("model %s, %d classes %s, %d train / %d val images", self.cfg.model.name,
                    self.class_map.num_classes, list(self.class_map.names), len(self.train_set),
                    len(self.val_set) if self.val_set is not None else 0)
        logger.info("processes %d x batch %d x accumulation %d = global batch %d; lr = %g x %d / %d = %g "
                    "(backbone x %g); %d optimizer steps/epoch, %d epochs; device %s, mixed precision %s",
                    acc.num_processes, int(t.batch_size), self.accum, self.global_batch, float(t.learning_rate),
                    self.global_batch, int(t.base_batch_size), self.lr, self.backbone_lr_factor,
                    self.steps_per_epoch, int(t.num_epochs), acc.device, acc.mixed_precision)
        logger.info("schedule %s: warmup %d steps from x%g, milestones at steps %s (gamma %g); EMA %s",
                    self.schedule.name, self.schedule.warmup_steps, self.schedule.warmup_factor,
                    list(self.schedule.milestones), self.schedule.gamma,
                    f"decay {self.ema.decay} tau {self.ema.tau}" if self.ema else "off")

    # ---------------------------------------------------------------- resume
    def resume(self) -> None:
        checkpoint = find_resume_checkpoint(self.cfg.get("resume", "auto"), self.run_dir)
        if checkpoint is None:
            return
        trainer_state, extras = self.checkpoints.load(checkpoint, ["ema", "lr_scheduler"])
        state = TrainingState(**trainer_state)
        if state.class_names != list(self.class_map.names):
            raise ValueError(f"cannot resume from {checkpoint}: it was trained with classes {state.class_names}, "
                             f"this run has {list(self.class_map.names)}")
        self.scheduler.load_state_dict(extras["lr_scheduler"])
        if self.ema is not None:
            if "ema" in extras:
                self.ema.load_state_dict(extras["ema"])
            else:
                logger.warning("%s has no EMA weights: the EMA restarts from the current weights", checkpoint)
                self.ema = ModelEMA(self.unwrapped, self.ema.decay, self.ema.tau)
        if (state.num_processes, state.global_batch_size) != (self.accelerator.num_processes, self.global_batch):
            # Same epoch, same number of images seen; the batch order differs from an uninterrupted run.
            images_done = state.step_in_epoch * state.global_batch_size
            state.step_in_epoch = min(images_done // self.global_batch, self.steps_per_epoch)
            logger.warning("resuming a run of %d process(es) / global batch %d with %d / %d: the data order "
                           "differs from an uninterrupted run, and the LR keeps the original run's scaling",
                           state.num_processes, state.global_batch_size, self.accelerator.num_processes,
                           self.global_batch)
            state.num_processes, state.global_batch_size = self.accelerator.num_processes, self.global_batch
        self.state = state
        logger.info("resumed from %s: epoch %d, step %d of %d in that epoch, global step %d", checkpoint,
                    state.epoch + 1, state.step_in_epoch, self.steps_per_epoch, state.global_step)

    # ---------------------------------------------------------------- main loop
    def run(self, stop: StopRequest) -> dict:
        self.setup()
        self.resume()
        state, num_epochs = self.state, int(self.t.num_epochs)
        if state.finished:
            logger.info("this run already finished (%s); nothing to train", state.finished)
        while not state.finished and state.epoch < num_epochs:
            if not self.train_epoch(stop):
                self.save_checkpoint()
                logger.warning("stopping on %s after global step %d: checkpoint written; rerun with resume=auto "
                               "(the default) to continue", stop.signal_name or "a stop signal", state.global_step)
                return self.summary("preempted")
            self.end_epoch()
        return self.finish(state.finished or "completed")

    def train_epoch(self, stop: StopRequest) -> bool:
        """Runs the rest of ``state.epoch``; False when a stop signal ended it early (after a step)."""
        state, acc = self.state, self.accelerator
        self.sampler.set_epoch(state.epoch, skip=state.step_in_epoch * self.accum)
        with stop_signals_blocked():  # the workers start here
            batches = iter(self.loader)
        self.model.train()
        progress = tqdm(total=self.steps_per_epoch, initial=state.step_in_epoch, disable=not self.is_main,
                        desc=f"epoch {state.epoch + 1}/{int(self.t.num_epochs)}", dynamic_ncols=True, leave=False)
        every = int(self.t.checkpoint_every_steps or 0)
        log_every = max(int(self.t.log_every_steps), 1)
        try:
            while state.step_in_epoch < self.steps_per_epoch:
                started = time.perf_counter()
                lr = self.head_lr()
                losses, images = self.optimizer_step(batches)
                state.step_in_epoch += 1
                state.global_step += 1
                state.epoch_images += images
                state.epoch_seconds += time.perf_counter() - started
                if losses is not None:
                    state.epoch_good_steps += 1
                    for key, value in losses.items():
                        state.epoch_loss_sums[key] = state.epoch_loss_sums.get(key, 0.0) + value
                    progress.set_postfix(loss=f"{losses['loss']:.4f}", lr=f"{lr:.3g}", refresh=False)  # update() redraws
                    if state.global_step % log_every == 0:
                        acc.log({f"train/{k}": v for k, v in losses.items()} | {"train/lr": lr},
                                step=state.global_step)
                progress.update(1)
                if stop.agreed(acc):
                    return False
                if every and state.global_step % every == 0 and state.step_in_epoch < self.steps_per_epoch:
                    self.save_checkpoint()
        finally:
            progress.close()
        return True

    def optimizer_step(self, batches) -> tuple[dict | None, int]:
        """One optimizer step over ``accum`` batches per process. Returns (mean losses over all processes, or
        None when the step was skipped because a loss or the gradient was non-finite; images in the step)."""
        acc, model = self.accelerator, self.model
        sums: dict[str, float] = {}
        finite = True
        backward_started = False
        images_in_step = 0
        # Forward passes update normalisation statistics (BatchNorm running mean/var) whatever the loss; a skipped
        # step must leave them as they were, or the NaN activations that made it non-finite would stay in the model.
        if self.buffers:
            torch._foreach_copy_(self.buffer_backup, self.buffers)  # into the same memory every step: one fused call
        for micro in range(self.accum):
            images, targets = to_device(*next(batches), acc.device)
            images_in_step += len(images) * acc.num_processes
            # Only the last batch of the group synchronises gradients across processes.
            sync = acc.no_sync(model) if micro < self.accum - 1 else contextlib.nullcontext()
            with sync:
                loss_dict = model(images, targets)
                total = sum(loss_dict.values())
                # One all-reduce per batch: every process learns whether *any* process has a non-finite loss,
                # so all skip the same steps (a process that skipped alone would deadlock DDP).
                values = torch.stack([total.detach(), *[v.detach() for v in loss_dict.values()]]).float()
                values = acc.reduce(values, reduction="sum") / acc.num_processes
                if not torch.isfinite(values).all():
                    finite = False
                    continue
                if not backward_started:
                    # Zeroed here, after the forward, as the reference loops do: the backward that follows
                    # reuses the memory just freed (zeroed before the forward, the activations take it and the
                    # gradients are allocated afresh, a few ms a step on the CPU).
                    self.optimizer.zero_grad(set_to_none=True)
                    backward_started = True
                acc.backward(total / self.accum)
            for key, value in zip(["loss", *[f"loss_{k}" for k in loss_dict]], values.tolist()):
                sums[key] = sums.get(key, 0.0) + value / self.accum
        stepped = False
        if finite:
            max_norm = float(self.t.clip_grad_norm) if self.t.clip_grad_norm else math.inf
            acc.unscale_gradients()  # fp16: the norm and the clipping are of the true gradients
            grad_norm = clip_gradients(self.trainable, max_norm)
            # Gradients are identical on all processes after DDP's all-reduce, so this test agrees everywhere.
            # Under fp16 the grad scaler handles overflow itself (it skips the step and lowers the scale).
            finite = acc.mixed_precision == "fp16" or bool(torch.isfinite(grad_norm))
            if finite:
                self.optimizer.step()
                stepped = not acc.optimizer_step_was_skipped
        self.scheduler.step()  # the schedule counts every step, skipped or not
        if not finite:
            if self.buffers:
                torch._foreach_copy_(self.buffers, self.buffer_backup)
            self.on_nonfinite_step()
            return None, images_in_step
        self.state.nonfinite_consecutive = 0
        if stepped:
            sums["grad_norm"] = float(grad_norm)
            if self.ema is not None:
                self.ema.update(self.unwrapped)
        return sums, images_in_step

    def on_nonfinite_step(self) -> None:
        state = self.state
        state.nonfinite_total += 1
        state.nonfinite_consecutive += 1
        limit = int(self.t.max_consecutive_nonfinite)
        logger.warning("non-finite loss or gradient at epoch %d step %d (global step %d): step skipped "
                       "(%d in a row, %d in total)", state.epoch + 1, state.step_in_epoch + 1,
                       state.global_step + 1, state.nonfinite_consecutive, state.nonfinite_total)
        if state.nonfinite_consecutive >= limit:
            last = self.run_dir / "checkpoints" / "last"
            raise TrainingDiverged(
                f"the loss was non-finite for {limit} consecutive optimizer steps (up to global step "
                f"{state.global_step + 1}, epoch {state.epoch + 1}); training stopped. The last good checkpoint "
                f"is {last.resolve() if last.exists() else '(none written yet)'}. Try a lower training.learning_rate,"
                f" check the data (python trainer/check_data.py) or use training.mixed_precision=no.")

    def head_lr(self) -> float:
        groups = self.optimizer.param_groups
        head = [g for g in groups if str(g.get("name", "")).startswith("head")]
        return float((head or groups)[0]["lr"])

    # ---------------------------------------------------------------- end of epoch
    def end_epoch(self) -> None:
        """Validate, record the epoch, save best/last checkpoints, report; set ``state.finished`` at the end."""
        state, t = self.state, self.t
        epoch = state.epoch + 1  # 1-based for people
        row = {"epoch": epoch, "global_step": state.global_step, "lr": self.head_lr()}
        good = max(state.epoch_good_steps, 1)
        row.update({key: value / good for key, value in state.epoch_loss_sums.items() if key != "grad_norm"})
        row["epoch_time_s"] = round(state.epoch_seconds, 3)
        row["images_per_s"] = round(state.epoch_images / state.epoch_seconds, 2) if state.epoch_seconds else None
        row["nonfinite_steps_skipped"] = state.nonfinite_total
        metrics: dict[str, float] = {}
        eval_every = int(t.eval_every or 0)
        evaluate = self.val_set is not None and eval_every > 0 and (
            epoch % eval_every == 0 or epoch == int(t.num_epochs))
        if evaluate:
            metrics = self.validate()
            row.update({key: metrics.get(key) for key in ("mAP", "AP50", "AP75")})
            if "val_loss" in metrics:
                row["val_loss"] = metrics["val_loss"]
            self.accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=state.global_step)
        self.accelerator.log({"epoch/images_per_s": row["images_per_s"] or 0.0, "epoch/loss": row.get("loss", 0.0)},
                             step=state.global_step)
        state.history.append(row)
        improved = evaluate and self.update_best(metrics)
        if improved:
            self.save_best_model(metrics)
        self.log_epoch(row, improved)

        patience = t.early_stopping_patience
        state.start_epoch(state.epoch + 1)
        if evaluate and patience is not None and state.evals_since_best >= int(patience):
            logger.info("early stopping: no %s improvement in %d evaluations (best %s at epoch %s)",
                        t.best_metric, state.evals_since_best, state.best_metric, state.best_epoch)
            state.finished = "early_stopped"
        elif state.epoch >= int(t.num_epochs):
            state.finished = "completed"
        checkpoint = self.save_checkpoint()
        if evaluate and self.report_fn is not None and self.is_main:
            self.report_fn(epoch, metrics, checkpoint)

    def validate(self) -> dict[str, float]:
        t = self.t
        model = self.ema.module if self.ema is not None else self.unwrapped
        # A stop signal during validation is handled at the next step boundary; blocking it here also keeps
        # it away from the evaluation's data-loader workers.
        with stop_signals_blocked():
            raw, _ = evaluate_model(model, self.val_set, self.accelerator, batch_size=int(t.eval_batch_size),
                                    num_workers=int(t.num_workers), progress=self.is_main)
            metrics = scalar_metrics(raw)
            if t.get("val_loss", False):
                metrics.update(validation_loss(model, self.val_set, self.accelerator,
                                               batch_size=int(t.eval_batch_size), num_workers=int(t.num_workers)))
        if "AP" in metrics:
            metrics["mAP"] = metrics["AP"]
        return metrics

    def update_best(self, metrics: dict[str, float]) -> bool:
        state, t = self.state, self.t
        name, mode = str(t.best_metric), str(t.best_metric_mode)
        value = metrics.get(name)
        if value is None:
            logger.warning("best_metric %r is not among the validation metrics %s", name, sorted(metrics))
            state.evals_since_best += 1
            return False
        best = state.best_metric
        better = best is None or (value > best if mode == "max" else value < best)
        if better:
            state.best_metric, state.best_epoch, state.evals_since_best = float(value), state.epoch + 1, 0
        else:
            state.evals_since_best += 1
        return better

    def log_epoch(self, row: dict, improved: bool) -> None:
        parts = [f"epoch {row['epoch']}/{int(self.t.num_epochs)}", f"loss {row.get('loss', float('nan')):.4f}",
                 f"lr {row['lr']:.4g}"]
        if row.get("mAP") is not None:
            parts.append(f"mAP {row['mAP']:.4f} AP50 {row.get('AP50') or 0:.4f} AP75 {row.get('AP75') or 0:.4f}")
        parts.append(f"{row['epoch_time_s']:.1f}s")
        if row["images_per_s"]:
            parts.append(f"{row['images_per_s']:.1f} img/s")
        if improved:
            parts.append(f"new best {self.t.best_metric}")
        logger.info(" | ".join(parts))
        if self.is_main:
            write_metrics_csv(self.state.history, self.run_dir / "metrics.csv")

    # ---------------------------------------------------------------- saving
    def save_checkpoint(self) -> Path:
        state = self.state
        extras = {"lr_scheduler": self.scheduler.state_dict()}
        if self.ema is not None:
            extras["ema"] = self.ema.state_dict()
        path = self.checkpoints.save(checkpoint_name(state.epoch, state.step_in_epoch), extras,
                                     dataclasses.asdict(state))
        logger.info("checkpoint: %s", path)
        return path

    def save_best_model(self, metrics: dict[str, float]) -> None:
        if self.is_main:
            atomic_torch_save(self.model_payload(metrics), self.run_dir / "best_model.pth")
            logger.info("best_model.pth: %s = %.4f at epoch %d", self.t.best_metric, self.state.best_metric,
                        self.state.best_epoch)

    def model_payload(self, metrics: dict[str, float]) -> dict:
        """The portable checkpoint format (plain containers and tensors: ``torch.load(weights_only=True)``)."""
        def cpu(state_dict):
            return {k: v.detach().cpu().clone() for k, v in state_dict.items()}

        return {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "model": cpu(self.unwrapped.state_dict()),
            "ema": cpu(self.ema.module.state_dict()) if self.ema is not None else None,
            "class_map": self.class_map.to_dict(),
            "config": OmegaConf.to_yaml(self.cfg, resolve=True),
            "model_config": OmegaConf.to_container(self.cfg.model, resolve=True),
            "epoch": self.state.epoch + 1,
            "global_step": self.state.global_step,
            "metrics": {k: float(v) for k, v in metrics.items()},
        }

    def finish(self, status: str) -> dict:
        if self.is_main:
            if not (self.run_dir / "best_model.pth").exists():
                logger.warning("no validation ran (no val set or eval_every=0): best_model.pth holds the final weights")
                atomic_torch_save(self.model_payload({}), self.run_dir / "best_model.pth")
            if self.state.history:
                write_metrics_csv(self.state.history, self.run_dir / "metrics.csv")
                plot_curves(self.state.history, self.run_dir)
        logger.info("training %s after %d epochs (global step %d); best %s %s at epoch %s; run dir %s", status,
                    len(self.state.history), self.state.global_step, self.t.best_metric, self.state.best_metric,
                    self.state.best_epoch, self.run_dir)
        return self.summary(status)

    def summary(self, status: str) -> dict:
        state = self.state
        last = state.history[-1] if state.history else {}
        return {"status": status, "run_dir": str(self.run_dir), "epochs": len(state.history),
                "global_step": state.global_step, "best_metric": state.best_metric, "best_epoch": state.best_epoch,
                "metrics": {k: v for k, v in last.items() if v is not None},
                "nonfinite_steps_skipped": state.nonfinite_total}
