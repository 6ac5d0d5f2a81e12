"""Per-epoch history -> ``metrics.csv`` and PNG curves in the run directory."""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from trainer.engine.checkpoint import atomic_write_text

LEADING_COLUMNS = ("epoch", "global_step", "lr", "loss")
TRAILING_COLUMNS = ("mAP", "AP50", "AP75", "epoch_time_s", "images_per_s", "nonfinite_steps_skipped")


def csv_columns(history: Sequence[dict]) -> list[str]:
    """Fixed columns around the model's loss terms (``loss_*``), in first-seen order."""
    terms = dict.fromkeys(key for row in history for key in row if key.startswith("loss_"))
    validation_loss = ["val_loss"] if any("val_loss" in row for row in history) else []
    return [*LEADING_COLUMNS, *terms, *validation_loss, *TRAILING_COLUMNS]


def write_metrics_csv(history: Sequence[dict], path: Path) -> None:
    """Rewritten whole from the checkpointed history, so a resumed run never duplicates or loses a row."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=csv_columns(history), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({key: ("" if value is None else value) for key, value in row.items()})
    atomic_write_text(path, buffer.getvalue())


def plot_curves(history: Sequence[dict], run_dir: Path) -> list[Path]:
    """``loss_curve.png`` (total and per-term training loss) and ``map_curve.png`` (val mAP/AP50/AP75)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training nodes
    written = []
    epochs = [row["epoch"] for row in history]
    loss_keys = ["loss", *[c for c in csv_columns(history) if c.startswith("loss_")]]
    losses = {key: (epochs, [row.get(key) for row in history]) for key in loss_keys}
    written.append(_plot(run_dir / "loss_curve.png", losses, ylabel="training loss", title="Training loss"))

    evaluated = [row for row in history if row.get("mAP") is not None]
    if evaluated:
        aps = {key: ([row["epoch"] for row in evaluated], [row.get(key) for row in evaluated])
               for key in ("mAP", "AP50", "AP75")}
        written.append(_plot(run_dir / "map_curve.png", aps, ylabel="validation AP", title="Validation mAP",
                             ylim=(0, 1)))
    return written


def _plot(path: Path, series: dict, ylabel: str, title: str, ylim=None) -> Path:
    """One line per ``name: (x, y)`` in ``series``, saved as a PNG."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o", label=name)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title, ylim=ylim)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
