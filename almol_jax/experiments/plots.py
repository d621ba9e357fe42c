"""The experiment's plots: headline metrics per arm (seed spread and bootstrap intervals of the
paired differences) and validation curves of every run (``DIR/plots/*.png``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def metrics_plot(report: dict[str, Any], out: Path) -> Path:
    """One panel per headline metric: each arm's mean over seeds, the spread as error bars."""
    panels = [(d, m) for d, ms in report["headline"].items() for m in ms]
    arms = list(report["arms"])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (direction, metric) in zip(axes[0], panels, strict=True):
        means = [report["arms"][a]["metrics"][direction].get(metric) for a in arms]
        spreads = [report["arms"][a]["spread"][direction].get(metric) or 0.0 for a in arms]
        ax.bar(range(len(arms)), [m or 0.0 for m in means], yerr=spreads, capsize=3)
        ax.set_xticks(range(len(arms)), arms, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{direction}\n{metric}", fontsize=8)
    fig.tight_layout()
    path = out / "metrics_per_arm.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def differences_plot(report: dict[str, Any], out: Path) -> Path:
    """The paired differences with their bootstrap intervals, one row per comparison/metric, in
    percent of the second arm's value (metrics on different scales share one axis)."""
    rows = []
    for name, per_dir in report["comparisons"].items():
        base_arm = name.split(" - ")[1]
        for d, per_metric in per_dir.items():
            for m, iv in per_metric.items():
                base = abs(report["arms"][base_arm]["metrics"][d].get(m) or 0.0) or 1.0
                scaled = [100.0 * iv[k] / base for k in ("low", "difference", "high")]
                rows.append((f"{name}: {d} {m}", scaled))
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(rows) + 1.2))
    for i, (_label, (low, diff, high)) in enumerate(rows):
        ax.plot([low, high], [i, i], color="tab:blue")
        ax.plot([diff], [i], "o", color="tab:blue")
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("paired difference, % of the second arm (bootstrap interval)")
    fig.tight_layout()
    path = out / "differences.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def validation_plot(curves: dict[str, list[dict[str, float]]], out: Path) -> Path:
    """Validation loss against step for every run of the experiment."""
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    for tag, curve in curves.items():
        if curve:
            ax.plot(
                [r["step"] for r in curve], [r["eval/loss"] for r in curve], marker=".", label=tag
            )
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (each arm's own objective)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    path = out / "validation_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
