"""The experiment's report: report.json, report.md (table + verdict) and plots, from the arms'
saved evaluations.

``report.json``: ``arms.<arm>.metrics.<direction>.<metric>`` (mean over the arm's seeds),
``arms.<arm>.spread`` (sample standard deviation over seeds; 0 for one seed),
``arms.<arm>.predictions.<direction>`` (the first seed's scorer-format predictions, a path
relative to DIR), ``arms.<arm>.seeds.<seed>`` (each seed's metrics and predictions),
``comparisons.<a - b>.<direction>.<metric>`` (paired bootstrap intervals, bootstrap.py), the
``verdict``, the stage ``timings`` and the versions of the scorers' packages.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from almol_jax.directions import DIRECTIONS
from almol_jax.experiments.arms import Layout
from almol_jax.experiments.bootstrap import ROW_METRICS, paired_interval, row_values, seed_mean
from almol_jax.experiments.config import ARMS, BASE_ARMS, ExperimentConfig
from almol_jax.experiments.verdict import COMPARISONS, format_markdown, verdict

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def arm_seeds(exp: ExperimentConfig, arm: str) -> list[int | None]:
    """The runs of an arm: one (seed None) for the base arms, one per seed for the others."""
    return [None] if arm in BASE_ARMS else list(range(exp.seeds))


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[key] = float(value)
    return out


def _mean_spread(values: list[dict[str, float]]) -> tuple[dict, dict]:
    keys = [k for k in values[0] if all(k in v for v in values)]
    mean, spread = {}, {}
    for key in keys:
        xs = np.array([v[key] for v in values], np.float64)
        mean[key] = float(np.mean(xs))
        spread[key] = float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
    return mean, spread


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def arm_entry(exp: ExperimentConfig, layout: Layout, arm: str) -> dict[str, Any]:
    """An arm's part of report.json, read from its evaluations' metrics.json files."""
    seeds: dict[str, Any] = {}
    for seed in arm_seeds(exp, arm):
        metrics, predictions = {}, {}
        for direction in DIRECTIONS:
            path = layout.eval_dir(arm, seed) / direction / "metrics.json"
            metrics[direction] = _numbers(json.loads(path.read_text(encoding="utf-8")))
            pred = layout.predictions(arm, seed, direction)
            predictions[direction] = str(pred.relative_to(layout.root))
        seeds[str(0 if seed is None else seed)] = {
            "run_dir": str(layout.run_dir(arm, seed).relative_to(layout.root)),
            "config": str(layout.config(arm, seed).relative_to(layout.root)),
            "metrics": metrics,
            "predictions": predictions,
        }
    first = next(iter(seeds.values()))
    entry: dict[str, Any] = {"metrics": {}, "spread": {}, "predictions": first["predictions"]}
    for direction in DIRECTIONS:
        mean, spread = _mean_spread([s["metrics"][direction] for s in seeds.values()])
        entry["metrics"][direction] = mean
        entry["spread"][direction] = spread
    entry["n_seeds"] = len(seeds)
    entry["seeds"] = seeds
    return entry


def comparisons(exp: ExperimentConfig, layout: Layout) -> dict[str, Any]:
    """Paired bootstrap intervals of the headline metrics for each comparison."""
    out: dict[str, Any] = {}
    for a, b in COMPARISONS:
        per_dir: dict[str, Any] = {}
        for direction, metrics in exp.headline.items():
            per_dir[direction] = {}
            for metric in metrics:
                rows = {}
                for arm in (a, b):
                    per_seed = [
                        row_values(layout.eval_dir(arm, s) / direction / "per_row.csv", metric)
                        for s in arm_seeds(exp, arm)
                    ]
                    rows[arm] = seed_mean(per_seed)
                per_dir[direction][metric] = paired_interval(
                    rows[a],
                    rows[b],
                    higher_is_better=ROW_METRICS[metric][2],
                    samples=exp.bootstrap_samples,
                    confidence=exp.confidence,
                )
        out[f"{a} - {b}"] = per_dir
    return out


def validation_curves(exp: ExperimentConfig, layout: Layout) -> dict[str, list[dict]]:
    """Every run's validation records (step, eval/loss, ...) from its metrics.jsonl."""
    from almol_jax.train.metrics_log import read_metrics

    curves = {}
    for arm in ARMS:
        for seed in arm_seeds(exp, arm):
            records = read_metrics(layout.run_dir(arm, seed))
            curve = [r for r in records if "eval/loss" in r]
            curves[layout.tag(arm, seed)] = sorted(curve, key=lambda r: r["step"])
    return curves


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("rdkit", "nltk", "rouge-score", "sacrebleu", "jax", "flax"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_report(
    exp: ExperimentConfig,
    layout: Layout,
    timings: dict[str, dict[str, dict[str, float]]],
    resumed: list[str],
    wall_seconds: float,
    *,
    jobs: int = 1,
    show: bool = True,
) -> dict[str, Any]:
    """Writes report.json, report.md and the plots into the experiment directory."""
    from almol_jax.experiments.plots import differences_plot, metrics_plot, validation_plot

    report: dict[str, Any] = {
        "experiment": {
            "config": exp.source,
            "seeds": exp.seeds,
            "subset_fraction": exp.subset_fraction,
        },
        "headline": {d: list(m) for d, m in exp.headline.items()},
        "arms": {arm: arm_entry(exp, layout, arm) for arm in ARMS},
        "comparisons": comparisons(exp, layout),
    }
    report["verdict"] = verdict(report)
    plots_dir = layout.root / "plots"
    plots_dir.mkdir(exist_ok=True)
    curves = validation_curves(exp, layout)
    report["plots"] = [
        str(p.relative_to(layout.root))
        for p in (
            metrics_plot(report, plots_dir),
            differences_plot(report, plots_dir),
            validation_plot(curves, plots_dir),
        )
    ]
    report["validation"] = {tag: c[-1] if c else None for tag, c in curves.items()}
    stages = [t for per_tag in timings.values() for t in per_tag.values()]
    report["timings"] = {
        "stages": timings,
        "resumed": resumed,
        "wall_seconds": wall_seconds,
        "jobs": jobs,
        "stages_wall_seconds": sum(t["wall"] for t in stages),
        "stages_cpu_seconds": sum(t["cpu"] for t in stages),
    }
    report["versions"] = _versions()
    report = _json_safe(report)
    (layout.root / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (layout.root / REPORT_MD).write_text(format_markdown(report), encoding="utf-8")
    if show:
        print(f"wrote {layout.root / REPORT_JSON}, {layout.root / REPORT_MD}, {plots_dir}/")
    return report


def format_summary(report: dict[str, Any]) -> str:
    """What the command prints at the end: the verdict."""
    return "\n" + report["verdict"]["text"]
