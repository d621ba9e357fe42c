"""Writing an evaluation report: metrics.json, metrics.md, per_row.csv, resources.json, plots.

``write_report(output_dir, task, metrics, per_row, resources)`` writes
- ``metrics.json``: the flat metrics dict (NaN written as null) plus ``task`` and
  ``resources`` (package versions, SciBERT vocab path + sha256, WordNet source, skipped metrics);
- ``metrics.md``: the headline table and the resources, for humans;
- ``per_row.csv``: one line per row (scores, validity, lengths, source/reference/output);
- ``score_vs_length.png`` and ``similarity_hist.png`` (see :mod:`almol_jax.eval.plots`).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

HEADLINE = {
    "caption2smiles": (
        "bleu",
        "exact_match",
        "levenshtein",
        "validity",
        "maccs_fts",
        "rdk_fts",
        "morgan_fts",
        "fcd",
        "chrf",
        "chrf_sentence_mean",
        "uniqueness",
    ),
    "smiles2caption": (
        "bleu2",
        "bleu4",
        "rouge1",
        "rouge2",
        "rougeL",
        "meteor",
        "chrf",
        "chrf_sentence_mean",
        "props_precision",
        "props_recall",
        "props_f1",
        "combo_precision",
        "combo_recall",
        "combo_f1",
    ),
}
LABELS = {
    "bleu": "BLEU (characters)",
    "exact_match": "Exact match (InChI)",
    "levenshtein": "Levenshtein (mean)",
    "validity": "Validity",
    "maccs_fts": "MACCS FTS",
    "rdk_fts": "RDK FTS",
    "morgan_fts": "Morgan FTS",
    "fcd": "FCD (fcd_torch)",
    "chrf": "chrF corpus (0-100)",
    "chrf_sentence_mean": "chrF mean sentence (0-100)",
    "uniqueness": "Uniqueness (valid outputs)",
    "bleu2": "BLEU-2 (SciBERT tokens)",
    "bleu4": "BLEU-4 (SciBERT tokens)",
    "rouge1": "ROUGE-1 F",
    "rouge2": "ROUGE-2 F",
    "rougeL": "ROUGE-L F",
    "meteor": "METEOR (SciBERT tokens)",
    "props_precision": "L+M-24 property precision",
    "props_recall": "L+M-24 property recall",
    "props_f1": "L+M-24 property F1",
    "combo_precision": "L+M-24 held-out combo precision",
    "combo_recall": "L+M-24 held-out combo recall",
    "combo_f1": "L+M-24 held-out combo F1",
}


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _json_value(value.item())
    return value


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.6f}"


def format_table(task: str, metrics: Mapping, skipped: Mapping | None = None) -> str:
    """The headline metrics as a Markdown table (skipped metrics say why)."""
    skipped = skipped or {}
    lines = [f"| {task} metric | value |", "|---|---|"]
    for key in HEADLINE[task]:
        if key not in metrics and key not in skipped:
            continue
        value = metrics.get(key)
        text = _fmt(value)
        if key in skipped and text == "n/a":
            text = f"skipped: {skipped[key]}"
        lines.append(f"| {LABELS.get(key, key)} (`{key}`) | {text} |")
    lines.append(f"| rows (`n`) | {metrics.get('n', 'n/a')} |")
    return "\n".join(lines)


def _resources_dict(resources) -> dict:
    if resources is None:
        return {}
    return resources.to_dict() if hasattr(resources, "to_dict") else dict(resources)


def write_per_row_csv(path: str | os.PathLike, per_row: Sequence[Mapping]) -> None:
    """One CSV line per row; columns are the union of the row keys, text columns last."""
    text_cols = ["source", "reference", "output"]
    columns: list[str] = []
    for row in per_row:
        for key in row:
            if key not in columns and key not in text_cols:
                columns.append(key)
    columns += [c for c in text_cols if any(c in r for r in per_row)]
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in per_row:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})


def write_report(
    output_dir: str | os.PathLike,
    task: str,
    metrics: Mapping,
    per_row: Sequence[Mapping],
    resources=None,
    *,
    plots: bool = True,
    extra: Mapping | None = None,
) -> dict[str, Path]:
    """Write the report files into ``output_dir`` (created); returns {name: path}."""
    from almol_jax.eval.io import check_task

    check_task(task)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = _resources_dict(resources)
    paths: dict[str, Path] = {}
    payload = {k: _json_value(v) for k, v in metrics.items()}
    payload["task"] = task
    payload["resources"] = res
    if extra:
        payload.update({k: _json_value(v) for k, v in extra.items()})
    paths["metrics.json"] = out / "metrics.json"
    paths["metrics.json"].write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    paths["per_row.csv"] = out / "per_row.csv"
    write_per_row_csv(paths["per_row.csv"], per_row)
    md = [f"# {task} evaluation", "", format_table(task, metrics, res.get("skipped")), ""]
    length_keys = [k for k in metrics if k.startswith(("length_", "corr_"))]
    if length_keys:
        md += ["## Length bias", "", "| statistic | value |", "|---|---|"]
        md += [f"| `{k}` | {_fmt(metrics[k])} |" for k in length_keys]
        md.append("")
    if res:
        md += ["## Resources", ""]
        for name, value in res.get("settings", {}).items():
            md.append(f"- {name}: {value}")
        for name, version in res.get("versions", {}).items():
            md.append(f"- {name}: {version or 'not installed'}")
        md.append(
            f"- SciBERT vocab: {res.get('scibert_vocab')} (sha256 {res.get('scibert_vocab_sha256')})"
        )
        md.append(f"- WordNet: {res.get('wordnet_source')} (version {res.get('wordnet_version')})")
        for key, why in res.get("skipped", {}).items():
            md.append(f"- skipped `{key}`: {why}")
        md.append("")
    paths["metrics.md"] = out / "metrics.md"
    paths["metrics.md"].write_text("\n".join(md))
    if plots and per_row:
        from almol_jax.eval.plots import write_plots

        paths.update(write_plots(out, task, per_row))
    return paths
