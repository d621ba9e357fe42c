"""PNG plots of an evaluation: score against output length, and per-row score histograms.

matplotlib is used through the non-interactive Agg canvas (no pyplot state, no display).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

SCORES = {
    "caption2smiles": ("morgan_fts", "maccs_fts", "rdk_fts", "chrf"),
    "smiles2caption": ("meteor", "rougeL", "rouge2", "chrf"),
}


def _column(per_row: Sequence[Mapping], key: str) -> list[float]:
    values = []
    for row in per_row:
        v = row.get(key)
        values.append(float("nan") if v is None else float(v))
    return values


def _figure(n_panels: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.0 * n_panels, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, n_panels, i + 1) for i in range(n_panels)]


def write_plots(output_dir: str | Path, task: str, per_row: Sequence[Mapping]) -> dict[str, Path]:
    """Write score_vs_length.png and similarity_hist.png; returns {name: path}."""
    out = Path(output_dir)
    keys = [k for k in SCORES[task] if any(r.get(k) is not None for r in per_row)]
    unit = "tokens" if any("out_tokens" in r for r in per_row) else "words"
    paths: dict[str, Path] = {}
    if not keys:
        return paths
    length = _column(per_row, f"out_{unit}")
    diff = [o - r for o, r in zip(length, _column(per_row, f"ref_{unit}"), strict=True)]
    fig, axes = _figure(2)
    main = keys[0]
    score = _column(per_row, main)
    for ax, x, label in (
        (axes[0], length, f"output length ({unit})"),
        (axes[1], diff, f"output - reference ({unit})"),
    ):
        pts = [
            (a, b) for a, b in zip(x, score, strict=True) if not (math.isnan(a) or math.isnan(b))
        ]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=4, alpha=0.4)
        ax.set_xlabel(label)
        ax.set_ylabel(main)
    fig.suptitle(f"{task}: {main} vs length")
    fig.tight_layout()
    paths["score_vs_length.png"] = out / "score_vs_length.png"
    fig.savefig(paths["score_vs_length.png"])
    fig, axes = _figure(len(keys))
    for ax, key in zip(axes, keys, strict=True):
        values = [v for v in _column(per_row, key) if not math.isnan(v)]
        if values:
            ax.hist(values, bins=20)
        ax.set_title(key)
        ax.set_xlabel("per-row score")
    fig.tight_layout()
    paths["similarity_hist.png"] = out / "similarity_hist.png"
    fig.savefig(paths["similarity_hist.png"])
    return paths
