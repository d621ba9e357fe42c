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

eval.py's `--config/--checkpoint` mode is `add_checkpoint_arguments` + `run_checkpoint_cli`.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def run_and_step(path: str | Path) -> tuple[Path, int | None]:
    """(run_dir, explicit step or None) of a run directory or a <run_dir>/checkpoints/<step>."""
    path = Path(path).absolute()
    if (path / "config.yaml").is_file():
        return path, None
    if path.name.isdigit() and (path.parent.parent / "config.yaml").is_file():
        return path.parent.parent, int(path.name)
    raise ValueError(
        f"checkpoint {str(path)!r} is neither a run directory (with config.yaml) nor a "
        "<run_dir>/checkpoints/<step> folder"
    )


def load_for_eval(
    run_dir_or_step: str | Path, *, adapters: bool, step: str | int = "best", mesh=None
):
    """(run_config, model, tokenizer, run_dir, step, use_adapters) for evaluation.

    For a full fine-tune with adapters off the model is the run's base, rebuilt from its config.
    `mesh`: where to place the weights (None: the run's mesh, see restore_for_inference).
    """
    from almol_jax.train.checkpoint import best_step, latest_step, restore_for_inference

    run_dir, explicit = run_and_step(run_dir_or_step)
    if explicit is not None:
        chosen = explicit
    elif step == "best":
        chosen = best_step(run_dir)
        chosen = latest_step(run_dir) if chosen is None else chosen
    elif step == "latest":
        chosen = latest_step(run_dir)
    else:
        chosen = int(step)
    if chosen is None:
        raise ValueError(f"run directory {str(run_dir)!r} holds no complete checkpoint")
    run_cfg, model, tokenizer = restore_for_inference(run_dir, mesh, step=chosen)
    use_adapters = adapters
    if not adapters and not run_cfg.lora.enabled:
        from almol_jax.train.setup import build_run_model

        model = build_run_model(run_cfg, mesh=mesh)  # the same seeded base, before any step
        use_adapters = True
    return run_cfg, model, tokenizer, run_dir, chosen, use_adapters


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
) -> dict[str, dict[str, Any]]:
    """Generates and scores `split` for each direction; returns {direction: metrics}.

    `cfg` (a RunConfig, or None for the run's own config.yaml) supplies the data files, prompt
    templates and generation settings; the model and tokenizer always come from the run.
    `directions` / `limit` default to cfg.eval.directions / cfg.eval.limit ("both" / all rows).
    `options` is an `almol_jax.eval.EvalOptions`, or a dict of overrides of the one built from
    cfg.eval (`eval_options_from_config`; None = cfg.eval as it is), `settings` a `DecodeSettings` (default: from cfg), `key` the
    sampling PRNG key (default: the "sampling" key of cfg.seed; unused by greedy decoding).
    """
    from almol_jax.data.prompts import format_prompt
    from almol_jax.data.report import DataReport
    from almol_jax.data.sources import load_examples
    from almol_jax.eval import (
        EvalOptions,
        Predictions,
        eval_options_from_config,
        score,
        write_report,
    )
    from almol_jax.eval.io import write_tsv
    from almol_jax.generation import generate_texts, settings_from_config
    from almol_jax.sharding import data_parallel_mesh
    from almol_jax.train.setup import seed_keys

    if isinstance(adapters, str):
        if adapters not in ADAPTER_CHOICES:
            raise ValueError(f"adapters={adapters!r} is not one of {ADAPTER_CHOICES}")
        adapters = adapters == "on"
    # several devices (e.g. runtime.cpu_devices): decode data-parallel, weights replicated
    dp_mesh = data_parallel_mesh()
    run_cfg, model, tokenizer, run_dir, chosen, use_adapters = load_for_eval(
        run_dir_or_step, adapters=adapters, step=step, mesh=dp_mesh
    )
    cfg = run_cfg if cfg is None else cfg
    limit = cfg.eval.limit if limit is None else limit
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit} must be >= 1 (or None for all rows)")
    wanted = _directions(cfg.eval.directions if directions is None else directions)
    if not isinstance(options, EvalOptions):
        options = eval_options_from_config(cfg.eval, **(options or {}))
    settings = settings_from_config(cfg) if settings is None else settings
    key = seed_keys(cfg.seed)["sampling"] if key is None else key
    out_root = (
        Path(output_dir) if output_dir else default_output_dir(run_dir, chosen, split, adapters)
    )

    mesh = _decode_mesh(run_cfg, settings.batch_size) if dp_mesh is None else dp_mesh
    report = DataReport()
    examples = load_examples(cfg.data, split, report)
    if not examples:
        files = getattr(cfg.data, f"{split}_files")
        raise ValueError(f"split {split!r} of the config has no rows (files: {files})")
    results: dict[str, dict[str, Any]] = {}
    for direction in wanted:
        rows = [ex for ex in examples if ex.direction == direction]
        if limit is not None:
            rows = rows[:limit]
        if not rows:
            raise ValueError(f"split {split!r} has no {direction} rows")
        prompts = [format_prompt(cfg.data.templates, direction, ex.source) for ex in rows]
        start = time.perf_counter()
        bar = _generation_bar(direction, len(prompts)) if progress else None
        outputs = generate_texts(
            model,
            tokenizer,
            prompts,
            settings,
            key=key,
            adapters=use_adapters,
            add_bos=cfg.tokenizer.add_bos,
            mesh=mesh,
            rules=run_cfg.mesh.rules,
            on_batch=None if bar is None else bar.update_to,
        )
        if bar is not None:
            bar.close()
        gen_seconds = time.perf_counter() - start
        predictions = Predictions(
            sources=[_one_line(ex.source) for ex in rows],
            references=[_one_line(ex.chosen) for ex in rows],
            outputs=[_one_line(o) for o in outputs],
        )
        out_dir = out_root / direction
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
        extra = {
            "checkpoint": str(run_dir),
            "step": chosen,
            "split": split,
            "adapters": "on" if adapters else "off",
            "rows": len(rows),
            "generation": {
                "method": settings.method,
                "max_new_tokens": settings.max_new_tokens,
                "seconds": gen_seconds,
                "mesh": None if mesh is None else dict(mesh.shape),
            },
            "scoring_seconds": time.perf_counter() - start,
        }
        write_report(out_dir, direction, metrics, per_row, resources, plots=plots, extra=extra)
        results[direction] = metrics
        if progress:
            print(f"{direction}: {len(rows)} rows generated in {gen_seconds:.1f} s -> {out_dir}")
    (out_root / "summary.json").write_text(json.dumps(_jsonable(results), indent=2) + "\n")
    return results


def _decode_mesh(run_cfg: Any, batch_size: int):
    """The run's mesh for data-parallel decoding, or None when the batch does not split on it."""
    from almol_jax.sharding import batch_shard_count
    from almol_jax.train.setup import make_run_mesh

    mesh = make_run_mesh(run_cfg)
    return mesh if batch_size % batch_shard_count(mesh, run_cfg.mesh.rules) == 0 else None


class _BatchBar:
    """A tqdm bar over decode batches, fed by generate_texts' on_batch(done, total) callback."""

    def __init__(self, direction: str, num_prompts: int):
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=None, desc=f"generating {direction} ({num_prompts} prompts)", unit="batch"
        )

    def update_to(self, done: int, total: int) -> None:
        self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        self._bar.close()


def _generation_bar(direction: str, num_prompts: int) -> _BatchBar:
    return _BatchBar(direction, num_prompts)


def _jsonable(results: dict) -> dict:
    def value(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return v

    return {d: {k: value(v) for k, v in m.items()} for d, m in results.items()}


# --------------------------------------------------------------------------- eval.py branch


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """eval.py's checkpoint-mode options."""
    g = parser.add_argument_group("checkpoint mode (generate, then score)")
    g.add_argument("--config", help="run config YAML: data files, templates, generation")
    g.add_argument("--checkpoint", help="run directory or <run_dir>/checkpoints/<step>")
    g.add_argument("--step", default="best", help='"best", "latest" or a step (run directory)')
    g.add_argument("--split", default="test", choices=("train", "validation", "test"))
    g.add_argument(
        "--directions",
        default=None,
        choices=("both", "smiles2caption", "caption2smiles"),
        help="default: eval.directions of the config (both)",
    )
    g.add_argument(
        "--limit",
        type=int,
        default=None,
        help="first N rows per direction (default: eval.limit of the config: all)",
    )
    g.add_argument(
        "--adapters",
        default="on",
        choices=ADAPTER_CHOICES,
        help="off: the base model of the same run (before/after tables)",
    )
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set generation.max_new_tokens=64 (of --config, else of "
        "the run's own config.yaml)",
    )


def run_checkpoint_cli(args: argparse.Namespace, options: Any) -> dict:
    """The eval.py branch: evaluate, print each direction's table, return the metrics.

    `options`: an EvalOptions, or a dict of overrides of the config's eval section.
    """
    from almol_jax.config import load_config
    from almol_jax.cpu import runtime as cpu_runtime
    from almol_jax.eval.report import format_table

    if args.config:
        cfg = load_config(args.config, args.set)
    else:  # the run's own config, with the --set overrides when there are any
        run_dir, _ = run_and_step(args.checkpoint)
        run_cfg = load_config(str(run_dir / "config.yaml"), args.set)
        cfg = run_cfg if args.set else None
    runtime = (cfg or run_cfg).runtime  # read before JAX starts
    cpu_runtime.configure(runtime, training=False)
    step: str | int = args.step if args.step in ("best", "latest") else int(args.step)
    results = evaluate_checkpoint(
        cfg,
        args.checkpoint,
        split=args.split,
        directions=args.directions,
        limit=args.limit,
        output_dir=args.output_dir,
        adapters=args.adapters,
        step=step,
        options=options,
        plots=not getattr(args, "no_plots", False),
        progress=True,
    )
    for direction, metrics in results.items():
        print(f"\n## {direction}\n" + format_table(direction, metrics))
    return results
