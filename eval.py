"""Score translations: ``python eval.py --task TASK --predictions FILE [--output-dir DIR]``,
or generate then score: ``python eval.py --config CFG --checkpoint RUN_DIR[/STEP] [--split test]
[--directions both] [--limit N] [--adapters on|off]`` (almol_jax.evaluate_checkpoint).

Prediction-file mode reads the community scorer's TSV (or a source/reference/output CSV or
JSONL), scores it with :mod:`almol_jax.eval`, prints the headline table and, with
``--output-dir``, writes metrics.json, metrics.md, per_row.csv and PNG plots. Checkpoint mode
(``--config/--checkpoint``: generate, then score) is its own branch of :func:`main`: its flags
and ``run_checkpoint_cli`` live here, the work in :func:`almol_jax.evaluate_checkpoint.evaluate_checkpoint`.
A checkpoint is not loaded onto another base than the one it was trained on unless
``--allow-other-base`` (almol_jax/run/restore.py). A user's mistake ends with one ``error: ...``
line and exit status 2 (``--debug``: with its traceback), a bug with a traceback (exit 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every mode: how to score and where the resources are."""
    g = parser.add_argument_group("scoring")
    g.add_argument(
        "--fingerprint-averaging",
        choices=("molt5", "lpm24"),
        default=None,
        help="FTS mean over valid outputs (molt5, default) or over all rows, invalid = 0 (lpm24)",
    )
    g.add_argument("--morgan-radius", type=int, default=None, help="default 2")
    g.add_argument("--chrf-char-order", type=int, default=None, help="default 6")
    g.add_argument("--chrf-word-order", type=int, default=None, help="0 (default): chrF, 2: chrF++")
    g.add_argument("--chrf-beta", type=int, default=None, help="default 2")
    g.add_argument("--text-trunc-length", type=int, default=None, help="SciBERT tokens kept (512)")
    g.add_argument("--no-fcd", action="store_true", help="skip FCD (needs fcd_torch)")
    g.add_argument("--fcd-device", default=None, help="default cpu")
    g.add_argument("--nested-props", help="L+M-24 nested_props.json: property metrics")
    g.add_argument("--withheld-combos", help="L+M-24 withheld combos file: combination metrics")
    g.add_argument("--num-workers", type=int, default=None, help="worker processes (default: CPUs)")
    g.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tqdm progress bars (default: when stderr is a terminal)",
    )
    r = parser.add_argument_group("resources")
    r.add_argument(
        "--scibert-vocab",
        help="SciBERT vocab.txt (else $ALMOL_SCIBERT_VOCAB, HF cache, ../shared/data)",
    )
    r.add_argument(
        "--wordnet-dir",
        help="NLTK_DATA root or WordNet dict dir (else $NLTK_DATA, nltk path, /usr/share/wordnet)",
    )
    r.add_argument(
        "--skip-unavailable",
        action="store_true",
        help="a missing resource skips its metrics (recorded in the report) instead of failing",
    )


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """eval.py's checkpoint-mode options."""
    from almol_jax.evaluate_checkpoint import ADAPTER_CHOICES

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
        "--allow-other-base",
        action="store_true",
        help="load the adapters even when the base weights differ from those they were trained "
        "on (refused by default)",
    )
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set generation.max_new_tokens=64 (of --config, else of "
        "the run's own config.yaml)",
    )


def run_checkpoint_cli(args: argparse.Namespace, options) -> dict:
    """The eval.py branch: evaluate, print each direction's table, return the metrics.

    `options`: an EvalOptions, or a dict of overrides of the config's eval section.
    """
    from almol_jax.config import load_config
    from almol_jax.cpu import runtime as cpu_runtime
    from almol_jax.eval.report import format_table
    from almol_jax.evaluate_checkpoint import evaluate_checkpoint
    from almol_jax.run.locate import STEP_CHOICES, run_and_step

    if args.config:
        cfg = load_config(args.config, args.set)
    else:  # the run's own config, with the --set overrides when there are any
        run_dir, _ = run_and_step(args.checkpoint)
        run_cfg = load_config(str(run_dir / "config.yaml"), args.set)
        cfg = run_cfg if args.set else None
    runtime = (cfg or run_cfg).runtime  # read before JAX starts
    cpu_runtime.configure(runtime, training=False)
    step: str | int = args.step if args.step in STEP_CHOICES else int(args.step)
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
        allow_other_base=args.allow_other_base,
    )
    for direction, metrics in results.items():
        print(f"\n## {direction}\n" + format_table(direction, metrics))
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--task",
        choices=("caption2smiles", "smiles2caption"),
        help="prediction-file mode: the file's direction (required there)",
    )
    parser.add_argument(
        "--predictions", help="scorer TSV, or CSV / JSONL with source, reference, output"
    )
    parser.add_argument(
        "--output-dir", help="write metrics.json, metrics.md, per_row.csv, plots here"
    )
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of a user error too"
    )
    add_scoring_arguments(parser)
    add_checkpoint_arguments(parser)
    return parser


def option_overrides(args: argparse.Namespace) -> dict:
    """The EvalOptions fields given on the command line (None = not given: keep the default)."""
    from almol_jax.eval.chrf import ChrfConfig

    given = {
        name: value
        for name, value in (
            ("char_order", args.chrf_char_order),
            ("word_order", args.chrf_word_order),
            ("beta", args.chrf_beta),
        )
        if value is not None
    }
    chrf = dataclasses.replace(ChrfConfig(), **given) if given else None
    return {
        "fingerprint_averaging": args.fingerprint_averaging,
        "morgan_radius": args.morgan_radius,
        "chrf": chrf,
        "text_trunc_length": args.text_trunc_length,
        "fcd": False if args.no_fcd else None,
        "fcd_device": args.fcd_device,
        "scibert_vocab": args.scibert_vocab,
        "wordnet_dir": args.wordnet_dir,
        "nested_props": args.nested_props,
        "withheld_combos": args.withheld_combos,
        "skip_unavailable": True if args.skip_unavailable else None,
        "num_workers": args.num_workers,
        "progress": sys.stderr.isatty() if args.progress is None else args.progress,
    }


def options_from_args(args: argparse.Namespace):
    """EvalOptions of prediction-file mode: the scorers' defaults, then the flags given."""
    from almol_jax.eval.options import EvalOptions

    return EvalOptions(**{k: v for k, v in option_overrides(args).items() if v is not None})


def run_prediction_file(args: argparse.Namespace) -> dict:
    """Score ``args.predictions``; print the table; write the report with ``--output-dir``."""
    from almol_jax.eval import read_predictions, score, write_report
    from almol_jax.eval.report import format_table

    options = options_from_args(args)
    predictions = read_predictions(args.predictions, args.task)
    start = time.perf_counter()
    metrics, per_row, resources = score(
        args.task, predictions.sources, predictions.references, predictions.outputs, options=options
    )
    seconds = time.perf_counter() - start
    print(format_table(args.task, metrics, resources.skipped))
    print(f"\n{len(predictions)} rows of {args.predictions} scored in {seconds:.1f} s")
    if args.output_dir:
        paths = write_report(
            args.output_dir,
            args.task,
            metrics,
            per_row,
            resources,
            plots=not args.no_plots,
            extra={"predictions": str(args.predictions), "seconds": seconds},
        )
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return metrics


def main(argv: list[str] | None = None) -> int:
    """eval.py under the error policy: a user's mistake is one `error:` line and exit status 2
    (almol_jax.errors.run_command; `--debug` shows its traceback), a bug a traceback."""
    from almol_jax.errors import run_command

    return run_command(run, argv)


def run(argv: list[str]) -> int:
    """eval.py's work; a user's mistake raises UserError."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from almol_jax.errors import UserError
    from almol_jax.eval.io import PredictionFileError
    from almol_jax.eval.resources import MissingResourceError

    try:
        if args.checkpoint:  # checkpoint mode: generate, then score (almol_jax.evaluate_checkpoint)
            # the flags given override the config's eval section (eval_options_from_config)
            run_checkpoint_cli(args, option_overrides(args))
            return 0
        if args.predictions:
            if not args.task:
                parser.error("--task is required with --predictions")
            if not Path(args.predictions).is_file():
                raise UserError(f"prediction file {args.predictions!r} does not exist")
            run_prediction_file(args)
            return 0
    except (PredictionFileError, MissingResourceError) as err:  # a bad file, a missing resource
        raise UserError(str(err)) from err
    parser.error("give --predictions FILE (with --task) or --checkpoint RUN_DIR (with --config)")


if __name__ == "__main__":
    sys.exit(main())
