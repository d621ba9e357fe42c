"""Evaluate a trained checkpoint: generate for each direction, write predictions, score them.

`evaluate_checkpoint(cfg, run_dir_or_step, split, directions, limit, output_dir, adapters)`
restores the run (`restore_for_inference`), reads the split's rows from `cfg.data` (pair files
expand to both directions; preference / scorer-TSV rows use their gold as the reference), builds
each prompt from the templates, decodes with `cfg.generation` (greedy by default, the paper's
setting), writes `<output_dir>/<direction>/predictions.tsv` in the scorer's TSV format and the
evaluator's report (metrics.json, metrics.md, per_row.csv, plots) next to it, and returns
{direction: metrics}. `adapters=False` evaluates the base model of the same run: for a LoRA run
the adapters are switched off, for a full fine-tune the base is rebuilt without the checkpoint;
this gives before/after tables from one code path.

eval.py's `--config/--checkpoint` mode parses its flags and calls `evaluate_checkpoint`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from almol_jax.errors import ConfigError

ADAPTER_CHOICES = ("on", "off")


def _directions(directions: str | Sequence[str]) -> tuple[str, ...]:
    """("smiles2caption", "caption2smiles") for "both", a one-direction string as a 1-tuple."""
    from almol_jax.config import directions_of

    if isinstance(directions, str) and directions != "both":
        directions = (directions,)
    return tuple(directions_of(directions))


def _one_line(text: str) -> str:
    """The scorer's TSV has one row per line and no quoting: tabs and newlines become spaces."""
    return re.sub(r"[\t\r\n]+", " ", text).strip()


def default_output_dir(run_dir: Path, step: int | str, split: str, adapters: bool) -> Path:
    """<run_dir>/eval/<split>-step<step>[-adapters_off]."""
    suffix = "" if adapters else "-adapters_off"
    return run_dir / "eval" / f"{split}-step{step}{suffix}"


def evaluate_checkpoint(
    cfg: Any,
    run_dir_or_step: str | Path,
    split: str = "test",
    directions: str | Sequence[str] | None = None,
    limit: int | None = None,
    output_dir: str | Path | None = None,
    adapters: bool | str = True,
    *,
    step: str | int = "best",
    options: Any = None,
    settings: Any = None,
    key: Any = None,
    plots: bool = True,
    progress: bool = False,
    allow_other_base: bool = False,
) -> dict[str, dict[str, Any]]:
    """Generates and scores `split` for each direction; returns {direction: metrics}.

    `cfg` (a RunConfig, or None for the run's own config.yaml) supplies the data files, prompt
    templates and generation settings; the model and tokenizer always come from the run.
    `directions` / `limit` default to cfg.eval.directions / cfg.eval.limit ("both" / all rows).
    `options` is an `almol_jax.eval.EvalOptions`, or a dict of overrides of the one built from
    cfg.eval (`eval_options_from_config`; None = cfg.eval as it is), `settings` a
    `DecodeSettings` (default: from cfg), `key` the sampling PRNG key (default: the "sampling"
    key of cfg.seed; unused by greedy decoding). `allow_other_base`: load the trainables even
    onto a base they were not trained on (run/restore.py refuses that by default).
    """
    from almol_jax.data.prompts import format_prompt
    from almol_jax.data.report import DataReport
    from almol_jax.data.sources import load_examples
    from almol_jax.eval import EvalOptions, eval_options_from_config
    from almol_jax.generation import settings_from_config
    from almol_jax.run.restore import load_for_eval
    from almol_jax.seeds import seed_keys
    from almol_jax.sharding import data_parallel_mesh

    if isinstance(adapters, str):
        if adapters not in ADAPTER_CHOICES:
            raise ConfigError(f"adapters={adapters!r} is not one of {ADAPTER_CHOICES}")
        adapters = adapters == "on"
    # several devices (e.g. runtime.cpu_devices): decode data-parallel, weights replicated
    dp_mesh = data_parallel_mesh()
    run_cfg, model, tokenizer, run_dir, chosen, use_adapters = load_for_eval(
        run_dir_or_step,
        adapters=adapters,
        step=step,
        mesh=dp_mesh,
        allow_other_base=allow_other_base,
    )
    cfg = run_cfg if cfg is None else cfg
    limit = cfg.eval.limit if limit is None else limit
    if limit is not None and limit < 1:
        raise ConfigError(f"limit={limit} must be >= 1 (or None for all rows)")
    wanted = _directions(cfg.eval.directions if directions is None else directions)
    if not isinstance(options, EvalOptions):
        options = eval_options_from_config(cfg.eval, **(options or {}))
    settings = settings_from_config(cfg) if settings is None else settings
    out_root = (
        Path(output_dir) if output_dir else default_output_dir(run_dir, chosen, split, adapters)
    )
    decoding = _Decoding(
        model=model,
        tokenizer=tokenizer,
        settings=settings,
        key=seed_keys(cfg.seed)["sampling"] if key is None else key,
        adapters=use_adapters,
        add_bos=cfg.tokenizer.add_bos,
        mesh=_decode_mesh(run_cfg, settings.batch_size) if dp_mesh is None else dp_mesh,
        rules=run_cfg.mesh.rules,
    )
    examples = load_examples(cfg.data, split, DataReport())
    if not examples:
        files = getattr(cfg.data, f"{split}_files")
        raise ConfigError(f"split {split!r} of the config has no rows (files: {files})")
    about = {"checkpoint": str(run_dir), "step": chosen, "split": split}
    about["adapters"] = "on" if adapters else "off"
    results: dict[str, dict[str, Any]] = {}
    for direction in wanted:
        rows = [ex for ex in examples if ex.direction == direction]
        if limit is not None:
            rows = rows[:limit]
        if not rows:
            raise ConfigError(f"split {split!r} has no {direction} rows")
        prompts = [
            format_prompt(cfg.data.templates, direction, ex.source, tokenizer) for ex in rows
        ]
        outputs, gen_seconds = decoding.texts(direction, prompts, progress)
        extra = dict(about, rows=len(rows), generation=decoding.record(direction, gen_seconds))
        out_dir = out_root / direction
        results[direction] = _score_direction(
            out_dir, direction, rows, outputs, options, extra, plots=plots
        )
        if progress:
            print(f"{direction}: {len(rows)} rows generated in {gen_seconds:.1f} s -> {out_dir}")
    (out_root / "summary.json").write_text(json.dumps(_jsonable(results), indent=2) + "\n")
    return results


@dataclass(frozen=True)
class _Decoding:
    """What every direction's generation shares: the restored model and how to decode."""

    model: Any
    tokenizer: Any
    settings: Any  # DecodeSettings
    key: Any  # the sampling key (unused by greedy decoding)
    adapters: bool
    add_bos: bool
    mesh: Any
    rules: Any

    def texts(self, direction: str, prompts: list[str], progress: bool) -> tuple[list[str], float]:
        """(output texts, seconds) of `prompts`, with a batch progress bar when `progress`."""
        from almol_jax.generation import generate_texts
        from almol_jax.generation.progress import BatchProgressBar

        start = time.perf_counter()
        bar = BatchProgressBar(direction, len(prompts)) if progress else None
        outputs = generate_texts(
            self.model,
            self.tokenizer,
            prompts,
            self.settings.for_direction(direction),
            key=self.key,
            adapters=self.adapters,
            add_bos=self.add_bos,
            mesh=self.mesh,
            rules=self.rules,
            on_batch=None if bar is None else bar.update_to,
        )
        if bar is not None:
            bar.close()
        return outputs, time.perf_counter() - start

    def record(self, direction: str, seconds: float) -> dict[str, Any]:
        """The report's "generation" entry."""
        settings = self.settings.for_direction(direction)
        return {
            "method": settings.method,
            "num_beams": settings.num_beams if settings.method == "beam" else 1,
            "smiles_grammar": settings.smiles_grammar,
            "smiles_rdkit_check": settings.rdkit_check_applies,
            "max_new_tokens": self.settings.max_new_tokens,
            "seconds": seconds,
            "mesh": None if self.mesh is None else dict(self.mesh.shape),
        }


def _score_direction(
    out_dir: Path, direction: str, rows, outputs, options, extra: dict, *, plots: bool
) -> dict[str, Any]:
    """Writes `<out_dir>/predictions.tsv`, scores it, writes the report; returns the metrics."""
    from almol_jax.eval import Predictions, score, write_report
    from almol_jax.eval.io import write_tsv

    predictions = Predictions(
        sources=[_one_line(ex.source) for ex in rows],
        references=[_one_line(ex.chosen) for ex in rows],
        outputs=[_one_line(o) for o in outputs],
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tsv(out_dir / "predictions.tsv", direction, predictions)
    start = time.perf_counter()
    metrics, per_row, resources = score(
        direction,
        predictions.sources,
        predictions.references,
        predictions.outputs,
        options=options,
    )
    extra = dict(extra, scoring_seconds=time.perf_counter() - start)
    write_report(out_dir, direction, metrics, per_row, resources, plots=plots, extra=extra)
    return metrics


def _decode_mesh(run_cfg: Any, batch_size: int):
    """The run's mesh for data-parallel decoding, or None when the batch does not split on it."""
    from almol_jax.run.setup import make_run_mesh
    from almol_jax.sharding import batch_shard_count

    mesh = make_run_mesh(run_cfg)
    return mesh if batch_size % batch_shard_count(mesh, run_cfg.mesh.rules) == 0 else None


def _jsonable(results: dict) -> dict:
    def value(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return v

    return {d: {k: value(v) for k, v in m.items()} for d, m in results.items()}
