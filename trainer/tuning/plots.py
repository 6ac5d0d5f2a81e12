"""The two sweep plots: the metric of every trial in order (with the running best) and the parameter importances."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from trainer.tuning.results import TrialSummary  # noqa: E402

_STATUS_STYLE = {"completed": ("tab:blue", "o"), "stopped_early": ("tab:orange", "v"), "error": ("tab:red", "x"),
                 "unfinished": ("tab:gray", "s")}


def plot_metric_vs_trial(trials: Sequence[TrialSummary], metric: str, mode: str, path: Path) -> None:
    scored = sorted((t for t in trials if t.best_value is not None), key=lambda t: t.number)
    fig, ax = plt.subplots(figsize=(7, 4))
    for status, (colour, marker) in _STATUS_STYLE.items():
        points = [t for t in scored if t.status == status]
        if points:
            ax.scatter([t.number for t in points], [t.best_value for t in points], c=colour, marker=marker,
                       label=status.replace("_", " "), zorder=3)
    if scored:
        running, best = [], None
        for t in scored:
            better = best is None or (t.best_value > best if mode == "max" else t.best_value < best)
            best = t.best_value if better else best
            running.append(best)
        ax.step([t.number for t in scored], running, where="post", color="black", lw=1, label="best so far")
        ax.legend(loc="best")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{metric} (best epoch)")
    ax.set_title(f"{metric} per trial ({mode})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_param_importances(importances: Mapping[str, float], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 0.5 * max(len(importances), 2) + 1.5))
    if importances:
        names = list(importances)[::-1]  # most important on top
        ax.barh(names, [importances[n] for n in names], color="tab:blue")
        ax.set_xlabel("importance (PED-ANOVA, sums to 1)")
    else:
        ax.text(0.5, 0.5, "not enough trials with distinct results\nto estimate importances", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title("Parameter importances")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
