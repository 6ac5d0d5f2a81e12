"""Learning checks: ``python benchmarks/learn.py [check=all|sample|bccd] [key=value ...]``.

``sample``: ``custom_detector`` trained by the engine (``trainer.engine.train``, as ``trainer/train.py`` runs it)
on the built-in synthetic sample data must reach ``target_ap50`` val mAP@0.5; the CPU time is reported.

``bccd``: ``ssdlite`` and ``faster_rcnn_320`` from random weights on ``../shared/datasets/bccd`` (train split,
read in place) for the same budget of epochs, once by the engine and once by a bare reference loop with the
upstream defaults (SGD at a fixed LR, no warmup, no LR scaling, no EMA), for each of ``seeds`` (initial weights
and data order): val mAP and AP50 per class side by side, with the CPU seconds each spent. The engine runs its
defaults (warmup, EMA, clipping, schedule, augmentation) at the same LR as the reference: its ``learning_rate``
is set so that the batch-scaled LR equals ``reference_lr`` (``match_lr=false`` keeps the engine's own LR).

Writes ``OUT/learn.md`` and ``OUT/learn.json``; running one check keeps the other check's last result there.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``trainer`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from benchmarks.common import BCCD_DIR, REPO_ROOT, compose_train_config, machine, sample_data
from trainer.data.builder import build_datasets
from trainer.data.dataset import collate_fn
from trainer.engine import train
from trainer.evaluation.distributed import build_accelerator, evaluate_model
from trainer.models import build_model, load_trained_model

DEFAULTS = {
    "check": "all",
    "out": str(REPO_ROOT / "benchmarks" / "results"),
    # sample check
    "sample_images": 200, "sample_size": [256, 192], "sample_epochs": 24, "target_ap50": 0.9,
    "sample_overrides": ["model.min_size=192", "model.max_size=256", "training.batch_size=8",
                         "training.learning_rate=0.04", "training.warmup_iters=50", "training.lr_scheduler=cosine",
                         "ema.tau=200"],
    # bccd check
    "bccd_models": ["ssdlite", "faster_rcnn_320"],
    "bccd_epochs": {"ssdlite": 6, "faster_rcnn_320": 2},  # the budget per model (same for both loops)
    "batch_size": 4,
    "seeds": [42, 43],     # one engine run and one reference run per seed; the tables give the means
    "ours_overrides": [],  # extra engine overrides for the bccd check
    "reference_lr": 0.01,  # the upstream default, used as is: no scaling by batch size, no warmup, no decay
    "match_lr": True,      # the engine's batch-scaled LR = reference_lr (compare the recipes at one LR)
    "num_workers": 1,
}


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (data loader workers)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def split_overrides(data_dir: Path) -> list[str]:
    """Train on ``train.jsonl``, validate on ``val.jsonl`` (images are read in place)."""
    return [f"dataset.train_jsonl={data_dir / 'train.jsonl'}", f"dataset.val_jsonl={data_dir / 'val.jsonl'}"]


def per_class(metrics: dict) -> dict:
    return {name: {"AP": row["AP"], "AP50": row["AP50"]} for name, row in metrics["per_class"].items()}


def evaluate(model, val_set) -> dict:
    metrics, _ = evaluate_model(model, val_set, build_accelerator(), batch_size=4)
    return {"mAP": metrics["stats"]["AP"], "AP50": metrics["stats"]["AP50"], "per_class": per_class(metrics)}


def train_with_engine(overrides: list[str], run_dir: Path) -> tuple[dict, float, float]:
    """``trainer.engine.train`` as ``trainer/train.py`` runs it; returns (summary, CPU s, wall s)."""
    cfg = compose_train_config([*overrides, "logger=none", "training.checkpoint_every_steps=0"])
    cpu, wall = cpu_seconds(), time.perf_counter()
    summary = train(cfg, run_dir=run_dir)
    return summary, cpu_seconds() - cpu, time.perf_counter() - wall


def sample_check(options, work_dir: Path) -> dict:
    data_dir = sample_data(work_dir / "sample", int(options.sample_images), tuple(options.sample_size),
                           val_fraction=0.2)
    run_dir = work_dir / "sample_run"
    overrides = ["model=custom_detector", *split_overrides(data_dir),
                 f"training.num_epochs={int(options.sample_epochs)}", f"training.eval_every={int(options.sample_epochs)}",
                 f"training.num_workers={int(options.num_workers)}", *options.sample_overrides]
    summary, cpu, wall = train_with_engine(overrides, run_dir)
    model, class_map, _ = load_trained_model(run_dir / "best_model.pth")
    val_set = build_datasets({"train_jsonl": str(data_dir / "train.jsonl"), "val_jsonl": str(data_dir / "val.jsonl"),
                              "augmentation": "none"}, classes=list(class_map.names)).val
    result = evaluate(model, val_set)
    return {"model": "custom_detector", "images": int(options.sample_images), "image_size": list(options.sample_size),
            "val_images": len(val_set), "epochs": int(options.sample_epochs), "overrides": list(overrides[3:]),
            "cpu_s": cpu, "wall_s": wall, "status": summary["status"], "target_ap50": float(options.target_ap50),
            "reached": result["AP50"] is not None and result["AP50"] >= float(options.target_ap50), **result}


def reference_loop(model_name: str, epochs: int, seed: int, options) -> tuple[dict, float, float]:
    """The bare reference: plain SGD(momentum 0.9, weight decay 1e-4) at a fixed LR, same model, data, batch."""
    cfg = compose_train_config([f"model={model_name}", *split_overrides(BCCD_DIR), f"seed={seed}"])
    data = build_datasets(cfg.dataset, seed=int(cfg.seed))
    torch.manual_seed(int(cfg.seed))
    model = build_model(cfg.model, data.class_map.num_classes)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=float(options.reference_lr),
                                momentum=0.9, weight_decay=1e-4)
    loader = DataLoader(data.train, batch_size=int(options.batch_size), shuffle=True, drop_last=True,
                        collate_fn=collate_fn, num_workers=int(options.num_workers))
    cpu, wall = cpu_seconds(), time.perf_counter()
    model.train()
    for _ in range(epochs):
        for images, targets in loader:
            loss = sum(model(images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
    return evaluate(model, data.val), cpu, wall


def engine_lr_overrides(options) -> list[str]:
    """``training.learning_rate`` such that the engine's LR (learning_rate x batch / base_batch_size) is the
    reference's fixed LR at this batch size."""
    if not options.match_lr:
        return []
    base_batch = int(compose_train_config([]).training.base_batch_size)
    return [f"training.learning_rate={float(options.reference_lr) * base_batch / int(options.batch_size):g}"]


def mean_result(results: list[dict]) -> dict:
    """Means over seeds of mAP, AP50, per-class AP50 and CPU/wall seconds."""
    def mean(values):
        values = [v if v is not None else 0.0 for v in values]
        return sum(values) / len(values)

    classes = results[0]["per_class"]
    return {"mAP": mean([r["mAP"] for r in results]), "AP50": mean([r["AP50"] for r in results]),
            "per_class": {c: {k: mean([r["per_class"][c][k] for r in results]) for k in ("AP", "AP50")}
                          for c in classes},
            "cpu_s": mean([r["cpu_s"] for r in results]), "wall_s": mean([r["wall_s"] for r in results])}


def bccd_check(options, work_dir: Path) -> list[dict]:
    if not (BCCD_DIR / "train.jsonl").is_file():
        raise SystemExit(f"BCCD not found at {BCCD_DIR}: the bccd check needs ../shared/datasets/bccd")
    engine_overrides = [*engine_lr_overrides(options), *options.ours_overrides]
    rows = []
    for model_name in options.bccd_models:
        epochs = int(options.bccd_epochs[model_name])
        runs = []
        for seed in options.seeds:
            run_dir = work_dir / f"bccd_{model_name}_{seed}"
            overrides = [f"model={model_name}", *split_overrides(BCCD_DIR), f"seed={int(seed)}",
                         f"training.num_epochs={epochs}", f"training.eval_every={epochs}",
                         f"training.batch_size={int(options.batch_size)}",
                         f"training.num_workers={int(options.num_workers)}", *engine_overrides]
            summary, cpu, wall = train_with_engine(overrides, run_dir)
            model, class_map, _ = load_trained_model(run_dir / "best_model.pth")
            val_set = build_datasets(compose_train_config(overrides).dataset, classes=list(class_map.names)).val
            ours = {"cpu_s": cpu, "wall_s": wall, "status": summary["status"], **evaluate(model, val_set)}
            reference, ref_cpu, ref_wall = reference_loop(model_name, epochs, int(seed), options)
            runs.append({"seed": int(seed), "ours": ours,
                         "reference": {"cpu_s": ref_cpu, "wall_s": ref_wall, **reference}})
        rows.append({"model": model_name, "epochs": epochs, "batch_size": int(options.batch_size),
                     "ours_overrides": engine_overrides, "runs": runs,
                     "ours": mean_result([run["ours"] for run in runs]),
                     "reference": mean_result([run["reference"] for run in runs])})
    return rows


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def to_markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# Learning checks", "", f"Machine: {m['cpu']}, {m['cpu_cores_available']} CPU cores shared with other "
             "jobs, " + ("no GPU." if not m["cuda"] else f"GPU {m['cuda']}."), ""]
    sample = report.get("sample")
    if sample:
        lines += ["## custom_detector on the built-in sample data (engine, `trainer.engine.train`)", "",
                  f"{sample['images']} synthetic images of {sample['image_size'][0]}x{sample['image_size'][1]} "
                  f"({sample['val_images']} val), {sample['epochs']} epochs, overrides "
                  f"`{' '.join(sample['overrides'])}`. Measured {sample['finished']} with `{sample['command']}`.", "",
                  "| val mAP@0.5 | target | reached | val mAP@[.5:.95] | CPU time | wall time |", "|---|---|---|---|---|---|",
                  f"| {_num(sample['AP50'])} | >= {sample['target_ap50']} | {'yes' if sample['reached'] else 'NO'} | "
                  f"{_num(sample['mAP'])} | {sample['cpu_s'] / 60:.1f} min | {sample['wall_s'] / 60:.1f} min |", ""]
    for row in report.get("bccd", []):
        ours, ref = row["ours"], row["reference"]
        epochs = f"{row['epochs']} epoch{'s' * (row['epochs'] != 1)}"
        lines += [f"## {row['model']} from random weights on BCCD, {epochs} of the train split, "
                  f"batch {row['batch_size']}", "", f"Measured {row['finished']} with `{row['command']}`.", "",
                  f"Means over seeds {[run['seed'] for run in row['runs']]} (initial weights and data order).", "",
                  "| | val mAP | val AP50 | " + " | ".join(f"AP50 {c}" for c in ours["per_class"]) + " | CPU s |",
                  "|---|---|---|" + "---|" * len(ours["per_class"]) + "---|"]
        engine = "defaults" + (f", `{' '.join(row['ours_overrides'])}`" if row["ours_overrides"] else "")
        for label, side in ((f"ours (engine {engine})", ours), ("bare reference (fixed LR)", ref)):
            lines.append(f"| {label} | {_num(side['mAP'])} | {_num(side['AP50'])} | "
                         + " | ".join(_num(side["per_class"][c]["AP50"]) for c in ours["per_class"])
                         + f" | {side['cpu_s']:.0f} |")
        per_seed = ", ".join(f"seed {run['seed']}: {_num(run['ours']['mAP'])} vs {_num(run['reference']['mAP'])}"
                             for run in row["runs"])
        lines += ["", f"Ours - reference: {ours['mAP'] - ref['mAP']:+.3f} val mAP (mean); per seed, ours vs "
                  f"reference val mAP: {per_seed}.", ""]
    return "\n".join(lines)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def main(argv: list[str]) -> dict:
    options = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.from_cli(argv))
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise SystemExit(f"unknown option(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    if options.check not in ("all", "sample", "bccd"):
        raise SystemExit(f"check={options.check!r}: choose all, sample or bccd")
    threads = [f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"] if "OMP_NUM_THREADS" in os.environ else []
    command = " ".join([*threads, "python benchmarks/learn.py", *argv])  # the thread count changes the numbers
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    previous = out / "learn.json"
    report = json.loads(previous.read_text()) if previous.is_file() else {}
    report["machine"] = machine()
    with tempfile.TemporaryDirectory() as work_dir:
        if options.check in ("all", "sample"):
            report["sample"] = {**sample_check(options, Path(work_dir)), "command": command, "finished": _now()}
        if options.check in ("all", "bccd"):
            new = [{**row, "command": command, "finished": _now()} for row in bccd_check(options, Path(work_dir))]
            # A rerun replaces the rows of the same model and engine overrides and keeps the others.
            replaced = {(row["model"], tuple(row["ours_overrides"])) for row in new}
            report["bccd"] = [row for row in report.get("bccd", [])
                              if (row["model"], tuple(row.get("ours_overrides", []))) not in replaced] + new
    (out / "learn.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "learn.md").write_text(to_markdown(report))
    print(to_markdown(report))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
