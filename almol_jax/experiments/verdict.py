"""The verdict in plain words and report.md: does CPO on 10% beat the counterpart and the control?

A headline metric counts as *ahead* when the paired bootstrap interval of ``cpo_10pct - other``
lies wholly on the better side of 0, *behind* when it lies wholly on the worse side, and *within
noise* otherwise. The answer per comparison: yes (ahead somewhere, behind nowhere), no (behind
somewhere, ahead nowhere), mixed (both), or no difference beyond noise.
"""

from __future__ import annotations

import math
from typing import Any

from almol_jax.experiments.bootstrap import ROW_METRICS

COMPARISONS = (("cpo_10pct", "sft_full"), ("cpo_10pct", "sft_10pct"))
ROLES = {
    "sft_full": "the counterpart (SFT on every training pair)",
    "sft_10pct": "the control (same LoRA, data, steps; NLL on the chosen only)",
}
# report.md's table: (direction, metric, label)
TABLE = (
    ("smiles2caption", "bleu2", "s2c BLEU-2"),
    ("smiles2caption", "bleu4", "s2c BLEU-4"),
    ("smiles2caption", "meteor", "s2c METEOR"),
    ("smiles2caption", "rougeL", "s2c ROUGE-L"),
    ("smiles2caption", "chrf_sentence_mean", "s2c chrF"),
    ("caption2smiles", "validity", "c2s validity"),
    ("caption2smiles", "exact_match", "c2s exact"),
    ("caption2smiles", "morgan_fts_lpm24", "c2s Morgan FTS (inv.=0)"),
    ("caption2smiles", "morgan_fts_molt5", "c2s Morgan FTS (valid)"),
    ("caption2smiles", "maccs_fts_lpm24", "c2s MACCS FTS (inv.=0)"),
    ("caption2smiles", "levenshtein", "c2s Levenshtein"),
    ("caption2smiles", "chrf_sentence_mean", "c2s chrF"),
    ("caption2smiles", "length_chars_diff_mean", "c2s length bias (chars)"),
    ("smiles2caption", "length_tokens_diff_mean", "s2c length bias (tokens)"),
)


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _describe(direction: str, metric: str, iv: dict, base: float | None) -> str:
    rel = ""
    if base not in (None, 0.0):
        rel = f", {100.0 * iv['difference'] / abs(base):+.0f}%"
    return (
        f"{direction} {metric} ({iv['difference']:+.3f}{rel}; "
        f"{100 * iv['confidence']:.0f}% interval [{iv['low']:+.3f}, {iv['high']:+.3f}])"
    )


def compare(report: dict[str, Any], a: str, b: str) -> dict[str, Any]:
    """Ahead / behind / within-noise metric lists and the answer for ``a - b``."""
    groups: dict[str, list[str]] = {"ahead": [], "behind": [], "noise": []}
    for direction, per_metric in report["comparisons"][f"{a} - {b}"].items():
        for metric, iv in per_metric.items():
            higher = ROW_METRICS[metric][2]
            good_low, good_high = (iv["low"], iv["high"]) if higher else (-iv["high"], -iv["low"])
            group = "ahead" if good_low > 0 else "behind" if good_high < 0 else "noise"
            base = report["arms"][b]["metrics"][direction].get(metric)
            groups[group].append(_describe(direction, metric, iv, base))
    if groups["ahead"] and not groups["behind"]:
        answer = "yes"
    elif groups["behind"] and not groups["ahead"]:
        answer = "no"
    elif groups["ahead"]:
        answer = "mixed"
    else:
        answer = "no difference beyond noise"
    return {"answer": answer, **groups}


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """The verdict record: per comparison, and one paragraph of plain words."""
    out: dict[str, Any] = {}
    lines = []
    first = next(iter(next(iter(report["comparisons"].values())).values()))
    rows = next(iter(first.values()))["rows"]
    for a, b in COMPARISONS:
        c = compare(report, a, b)
        out[f"{a} - {b}"] = c
        parts = [
            f"**Does CPO on {100 * report['experiment']['subset_fraction']:.0f}% of the pairs beat {ROLES[b]}? {c['answer']}.**"
        ]
        for key, words in (
            ("ahead", "Ahead on"),
            ("behind", "Behind on"),
            ("noise", "Within noise on"),
        ):
            if c[key]:
                parts.append(f"{words}: " + "; ".join(c[key]) + ".")
        lines.append(" ".join(parts))
    seeds = report["experiment"]["seeds"]
    lines.append(
        f"Intervals: paired bootstrap over the {rows} test rows of each direction, the 10% arms "
        f"averaged over {seeds} seed{'s' if seeds > 1 else ''} row by row; sft_full and weak are "
        "trained once (the paper's counterpart and rejection system are fixed checkpoints too)."
    )
    out["text"] = "\n\n".join(lines)
    return out


def format_table(report: dict[str, Any]) -> str:
    """Arms x metrics: mean over seeds (+- sample standard deviation when several seeds)."""
    head = "| arm | seeds | " + " | ".join(label for _d, _m, label in TABLE) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(TABLE)]
    for arm, entry in report["arms"].items():
        cells = []
        for direction, metric, _label in TABLE:
            mean = entry["metrics"][direction].get(metric)
            spread = entry["spread"][direction].get(metric)
            cell = _f(mean)
            if entry["n_seeds"] > 1 and spread is not None:
                cell += f" ± {_f(spread)}"
            cells.append(cell)
        lines.append(f"| {arm} | {entry['n_seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_intervals(report: dict[str, Any]) -> str:
    """The comparisons' paired bootstrap intervals as a table."""
    lines = ["| comparison | direction | metric | difference | interval | P(ahead) |"]
    lines.append("|---|---|---|---:|---|---:|")
    for name, per_dir in report["comparisons"].items():
        for direction, per_metric in per_dir.items():
            for metric, iv in per_metric.items():
                lines.append(
                    f"| {name} | {direction} | {metric} | {iv['difference']:+.4f} | "
                    f"[{iv['low']:+.4f}, {iv['high']:+.4f}] | {iv['p_better']:.3f} |"
                )
    return "\n".join(lines)


VALIDATION_KEYS = ("eval/loss", "eval/nll_loss", "eval/rewards/accuracies", "eval/rewards/margins")


def format_validation(report: dict[str, Any]) -> str:
    """Each run's last validation record (its own objective's loss; reward accuracy and margin
    of the pair objectives on the validation triplets)."""
    lines = ["| run | step | " + " | ".join(k[5:] for k in VALIDATION_KEYS) + " |"]
    lines.append("|---|---:|" + "---:|" * len(VALIDATION_KEYS))
    for tag, record in report["validation"].items():
        if record:
            cells = [_f(record.get(k)) for k in VALIDATION_KEYS]
            lines.append(f"| {tag} | {record['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_markdown(report: dict[str, Any]) -> str:
    """report.md: the table, the intervals, the verdict, the plots and the timings."""
    timings = report["timings"]
    parts = [
        "# ALMol in miniature: CPO on 10% vs SFT on all",
        "",
        format_table(report),
        "",
        "## Paired differences (bootstrap over test rows)",
        "",
        format_intervals(report),
        "",
        "## Verdict",
        "",
        report["verdict"]["text"],
        "",
        "## Validation (last record of each run)",
        "",
        format_validation(report),
        "",
        "## Plots",
        "",
        *[f"- `{p}`" for p in report["plots"]],
        "",
        f"Time: the stages took {timings['stages_wall_seconds']:.0f} s wall"
        + (
            f" and {timings['stages_cpu_seconds']:.0f} s CPU (user + system, all processes)"
            if timings["stages_cpu_seconds"] > 0
            else ""
        )
        + f" when they ran (summed; up to {timings.get('jobs', 1)} at once);"
        + f" this invocation {timings['wall_seconds']:.0f} s"
        + (f" ({len(timings['resumed'])} stages already done)" if timings["resumed"] else "")
        + ".",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
    ]
    return "\n".join(parts)
