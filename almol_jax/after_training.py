"""After-training orchestration: what `train.py` does once `run_training` returns.

`resolve_builtin(cfg)` turns `tokenizer.kind: builtin` into the embedded dataset's tokenizer
directory (building or reusing the dataset), so every later step sees a plain HF tokenizer path.
`after_training(cfg, summary)` runs what the config's `eval.at_end` / `export.at_end` ask for:
- evaluation of the test split in `eval.directions` with the checkpoint evaluator, twice: the
  untrained model ("step 0": the same seeded random init, or a LoRA run's base with adapters
  off) and the best checkpoint (lowest validation loss), both written under `<run_dir>/eval/`;
- the Hugging Face export of the best checkpoint (`export.format`, `export.dir`), written whole
  through a temporary folder; it replaces the run's own earlier export (a folder whose
  almol_jax_export.json names this run, e.g. before a resume), and refuses a non-empty folder
  holding anything else;
- with `eval.at_end_smiles_grammar` (and the grammar off in the run's config): caption2smiles of
  the best checkpoint once more with `generation.smiles_grammar: on`, under
  `<run_dir>/eval/test-step<N>-smiles-grammar/`;
- a step-0 vs final table (test metrics, the grammar-on column where evaluated, plus CPO's
  validation reward accuracy read from metrics.jsonl), printed and written to
  `<run_dir>/after_training.{json,md}`.
Plain host Python: the heavy lifting is in `evaluate_checkpoint` and `export_run`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

SUMMARY_JSON = "after_training.json"
SUMMARY_MD = "after_training.md"
STEP0_DIR = "test-step0"
GRAMMAR_SUFFIX = "-smiles-grammar"  # the grammar-on evaluation's folder: test-step<N> + this
GRAMMAR_LABEL = "final, SMILES grammar on"

# (metric key, label, higher is better) shown in the summary table, per direction.
TABLE_METRICS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "smiles2caption": (
        ("bleu2", "BLEU-2", True),
        ("bleu4", "BLEU-4", True),
        ("rouge1", "ROUGE-1", True),
        ("rougeL", "ROUGE-L", True),
        ("meteor", "METEOR", True),
        ("chrf", "chrF", True),
    ),
    "caption2smiles": (
        ("validity", "validity", True),
        ("exact_match", "exact match", True),
        ("bleu", "BLEU", True),
        ("levenshtein", "Levenshtein", False),
        ("morgan_fts_lpm24", "Morgan FTS (invalid = 0)", True),
        ("maccs_fts_lpm24", "MACCS FTS (invalid = 0)", True),
        ("morgan_fts_molt5", "Morgan FTS (valid only)", True),
        ("fcd", "FCD", False),
        ("chrf", "chrF", True),
    ),
}
VALIDATION_METRICS = (
    "eval/rewards/accuracies",
    "eval/smiles2caption/rewards/accuracies",
    "eval/caption2smiles/rewards/accuracies",
    "eval/rewards/margins",
    "eval/loss",
    "eval/nll_loss",
)


def resolve_builtin(cfg: Any) -> Any:
    """`cfg` with `tokenizer.kind: builtin` replaced by the built-in dataset's tokenizer dir.

    Builds (or reuses, from its cache) the dataset that `data.builtin` names; any other
    tokenizer kind is returned unchanged.
    """
    if cfg.tokenizer.kind != "builtin":
        return cfg
    if cfg.data.builtin != "rdkit_nci":
        raise ValueError(
            f"tokenizer.kind='builtin' needs data.builtin='rdkit_nci', got {cfg.data.builtin!r}"
        )
    from almol_jax.data.demo import build_demo_dataset

    paths = build_demo_dataset()
    tokenizer = dataclasses.replace(cfg.tokenizer, kind="hf", path=str(paths.tokenizer_dir))
    return dataclasses.replace(cfg, tokenizer=tokenizer)


def validation_curve(run_dir: str | Path) -> list[dict[str, float]]:
    """The validation records of metrics.jsonl ({"step", "eval/..."}), in step order."""
    from almol_jax.train.metrics_log import read_metrics

    records = read_metrics(run_dir)
    return sorted((r for r in records if "eval/loss" in r), key=lambda r: r["step"])


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _fmt(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.4f}"


def format_summary(summary: dict[str, Any]) -> str:
    """The step-0 vs final Markdown table of an `after_training` summary."""
    tests = summary.get("test", {})
    grammar = any("grammar" in row for rows in tests.values() for row in rows)
    extra = (f" {GRAMMAR_LABEL} |", "---:|") if grammar else ("", "")
    lines = [
        "| direction | metric | step 0 | final | better |" + extra[0],
        "|---|---|---:|---:|:---:|" + extra[1],
    ]
    for direction, rows in tests.items():
        for row in rows:
            before, after = row["step0"], row["final"]
            if math.isfinite(before) and math.isfinite(after):
                better = "yes" if (after > before) == row["higher_is_better"] else "no"
                better = "=" if _fmt(after) == _fmt(before) else better
            else:
                better = "-"
            cell = ""
            if grammar:  # a row the grammar-on evaluation did not score leaves the cell empty
                cell = f" {_fmt(row['grammar'])} |" if "grammar" in row else " |"
            lines.append(
                f"| {direction} | {row['label']} | {_fmt(before)} | {_fmt(after)} | {better} |"
                + cell
            )
    val = summary.get("validation") or {}
    if val:
        first, last = val["first"], val["last"]
        for key in VALIDATION_METRICS:
            if key in first:
                lines.append(
                    f"| validation | {key[5:]} | {_fmt(first[key])} (step {first['step']}) | "
                    f"{_fmt(last[key])} (step {last['step']}) | |" + (" |" if grammar else "")
                )
    return "\n".join(lines)


def _comparison(
    direction: str, before: dict, after: dict, grammar: dict | None = None
) -> list[dict[str, Any]]:
    rows = []
    for key, label, higher in TABLE_METRICS[direction]:
        if key in before or key in after:
            row = {"metric": key, "label": label, "higher_is_better": higher}
            row.update(step0=_float(before.get(key)), final=_float(after.get(key)))
            if grammar is not None:
                row["grammar"] = _float(grammar.get(key))
            rows.append(row)
    return rows


def _grammar_column(cfg: Any, directions: tuple[str, ...]) -> bool:
    """Whether the grammar-on evaluation runs (asked for; the run's own decoding is free)."""
    wanted = cfg.eval.at_end_smiles_grammar and "caption2smiles" in directions
    return wanted and cfg.generation.smiles_grammar == "off"


def _with_smiles_grammar(cfg: Any) -> Any:
    return dataclasses.replace(
        cfg, generation=dataclasses.replace(cfg.generation, smiles_grammar="on")
    )


def after_training(
    cfg: Any, summary: dict[str, Any], *, progress: bool = True, plots: bool = True
) -> dict[str, Any]:
    """Evaluates (step 0 and best) and exports a finished run as `cfg` asks; returns the summary.

    `cfg` must be the config the run trained with (after `resolve_builtin`); `summary` is
    `run_training`'s return value (its "run_dir" locates the run). Does nothing (returns an
    empty summary) when neither `eval.at_end` nor `export.at_end` is set.
    """
    from almol_jax.config import directions_of

    run_dir = Path(summary["run_dir"])
    out: dict[str, Any] = {"run_dir": str(run_dir), "seconds": {}}
    if not (cfg.eval.at_end or cfg.export.at_end):
        return out
    curve = validation_curve(run_dir)
    if curve:
        out["validation"] = {"first": curve[0], "last": curve[-1], "curve": curve}
    if cfg.eval.at_end and not _has_test_split(cfg):
        out["eval_skipped"] = "eval.at_end is set but data.test_files is empty"
        print(f"not evaluating: {out['eval_skipped']}")
    elif cfg.eval.at_end:
        from almol_jax.eval import eval_options_from_config
        from almol_jax.evaluate_checkpoint import evaluate_checkpoint
        from almol_jax.run.locate import choose_step

        # after training, a missing WordNet/SciBERT vocab skips its metric (recorded in the
        # report) instead of losing the run's evaluation
        options = eval_options_from_config(cfg.eval, skip_unavailable=True, progress=progress)
        directions = directions_of(cfg.eval.directions)
        common = dict(
            split="test",
            directions=directions,
            limit=cfg.eval.limit,
            options=options,
            plots=plots,
            progress=progress,
        )
        results = {}
        for name, adapters, output_dir in (
            ("step0", False, run_dir / "eval" / STEP0_DIR),
            ("final", True, None),
        ):
            if progress:
                print(f"evaluating the {'untrained (step 0)' if name == 'step0' else 'best'} model")
            start = time.perf_counter()
            results[name] = evaluate_checkpoint(
                cfg, run_dir, adapters=adapters, output_dir=output_dir, step="best", **common
            )
            out["seconds"][f"eval_{name}"] = time.perf_counter() - start
        out["best_step"] = choose_step(run_dir, "best")
        final_dir = run_dir / "eval" / f"test-step{out['best_step']}"
        out["eval_dirs"] = {"step0": str(run_dir / "eval" / STEP0_DIR), "final": str(final_dir)}
        if _grammar_column(cfg, directions):
            if progress:
                print("evaluating the best model's caption2smiles with the SMILES grammar on")
            start = time.perf_counter()
            grammar_dir = final_dir.with_name(final_dir.name + GRAMMAR_SUFFIX)
            results["grammar"] = evaluate_checkpoint(
                _with_smiles_grammar(cfg),
                run_dir,
                adapters=True,
                output_dir=grammar_dir,
                step="best",
                **dict(common, directions=("caption2smiles",)),
            )
            out["seconds"]["eval_grammar"] = time.perf_counter() - start
            out["eval_dirs"]["grammar"] = str(grammar_dir)
        out["test"] = {
            d: _comparison(
                d, results["step0"][d], results["final"][d], results.get("grammar", {}).get(d)
            )
            for d in directions
        }
    if cfg.export.at_end:
        from almol_jax.export.atomic import holds_export
        from almol_jax.export.run import export_dir_of, export_run

        start = time.perf_counter()
        ex = cfg.export
        target = export_dir_of(cfg)
        path = export_run(  # replaces the run's own previous export whole, never another folder
            run_dir,
            target,
            format=ex.format,
            dtype=ex.dtype,
            max_shard_size=ex.max_shard_size,
            step="best",
            overwrite=holds_export(target, run_dir),
        )
        out["export_dir"] = str(Path(path).absolute())
        out["seconds"]["export"] = time.perf_counter() - start
    (run_dir / SUMMARY_JSON).write_text(
        json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8"
    )
    (run_dir / SUMMARY_MD).write_text(format_summary(out) + "\n", encoding="utf-8")
    return out


def _has_test_split(cfg: Any) -> bool:
    from almol_jax.data.sources import split_files

    return bool(split_files(cfg.data, "test"))
