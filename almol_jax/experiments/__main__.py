"""``python -m almol_jax.experiments almol-mini [--quick] [--seeds N] [--config EXP.yaml]
[--jobs auto|N] --output-dir DIR``: the ALMol comparison (docs/experiments.md).

Runs (or resumes) every arm of the experiment in DIR and writes DIR/report.json, DIR/report.md
and DIR/plots/. A user's mistake ends with one ``error: ...`` line and exit status 2
(almol_jax/errors.py; ``--debug`` shows its traceback).
"""

from __future__ import annotations

import argparse
import signal
import sys

EXPERIMENTS = ("almol-mini",)


def main(argv: list[str] | None = None) -> int:
    """The command under the error policy (almol_jax.errors.run_command)."""
    from almol_jax.errors import run_command

    return run_command(run, argv)


def run(argv: list[str]) -> int:
    """Parse the command line and run the experiment; a user's mistake raises UserError."""
    parser = argparse.ArgumentParser(
        prog="python -m almol_jax.experiments",
        description="Run the ALMol comparison (CPO on 10% vs SFT on all) and report it.",
    )
    parser.add_argument("experiment", choices=EXPERIMENTS)
    parser.add_argument("--output-dir", required=True, help="experiment directory (resumed)")
    parser.add_argument(
        "--config", help="experiment YAML (default configs/experiments/almol_mini.yaml)"
    )
    parser.add_argument("--quick", action="store_true", help="one seed, fewer steps and rows (CI)")
    parser.add_argument(
        "--seeds", type=int, default=None, help="seeds of the 10%% arms (default 3)"
    )
    parser.add_argument(
        "--jobs",
        default="auto",
        help="stages run at once (default auto: 2 when JAX runs on the CPU, 1 on an accelerator)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no bars or stage lines")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a user error")
    args = parser.parse_args(argv)

    from almol_jax.experiments.config import load_experiment
    from almol_jax.experiments.report import format_summary
    from almol_jax.experiments.runner import run_experiment

    exp = load_experiment(args.config, quick=args.quick, seeds=args.seeds)
    # SIGTERM as Ctrl-C: the running stage's child gets SIGTERM (train.py saves a checkpoint)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run_experiment(exp, args.output_dir, show=not args.no_progress, jobs=args.jobs)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    print(format_summary(report))
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
