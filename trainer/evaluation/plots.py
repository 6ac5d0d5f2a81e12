"""Precision-recall curves and the confusion matrix as PNG files (matplotlib, no display needed)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: clusters and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_precision_recall(
    recall_thresholds: np.ndarray,
    curves: Mapping[str, np.ndarray],
    path: str | Path,
    ap50: Mapping[str, float | None] | None = None,
) -> Path:
    """One interpolated precision-recall curve per class (COCO's, at IoU=0.50)."""
    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    for name, precision in curves.items():
        label = name if not ap50 or ap50.get(name) is None else f"{name} (AP50={ap50[name]:.3f})"
        ax.plot(recall_thresholds, precision, label=label, linewidth=1.5)
    if not curves:
        ax.text(0.5, 0.5, "no class has ground truth", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title="Precision-recall per class (IoU=0.50)")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="lower left", fontsize="small")
    return _save(fig, path)


def plot_confusion_matrix(matrix: np.ndarray, labels: Sequence[str], path: str | Path) -> Path:
    """Counts, rows = ground truth, columns = prediction; cells coloured by row share so rare classes show."""
    matrix = np.asarray(matrix)
    row_sums = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, row_sums, out=np.zeros(matrix.shape, dtype=float), where=row_sums > 0)
    size = max(5.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=100)
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the ground-truth row")
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right")
    ax.set_yticks(ticks, labels)
    ax.set(xlabel="predicted", ylabel="ground truth", title="Confusion matrix (counts)")
    if len(labels) <= 30:  # beyond that the numbers are unreadable anyway
        for (row, col), count in np.ndenumerate(matrix):
            ax.text(col, row, str(count), ha="center", va="center", fontsize="small",
                    color="white" if shares[row, col] > 0.5 else "black")
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
