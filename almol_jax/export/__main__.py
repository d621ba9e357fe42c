"""CLI: `python -m almol_jax.export --checkpoint RUN_DIR[/checkpoints/STEP] --out DIR ...`.

Runs under the one error policy (`almol_jax.errors.run_command`): a user's mistake (a non-empty
`--out` without `--overwrite`, a path that is no run, a full disk) is one `error:` line, exit 2.
"""

from __future__ import annotations

import argparse
import sys

from almol_jax.errors import UserError, run_command
from almol_jax.export.run import FORMATS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m almol_jax.export",
        description="Export a trained run as a Hugging Face model (merged) or PEFT adapters.",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="run directory (best checkpoint, else latest) or <run_dir>/checkpoints/<step>",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty --out whole (by default it is refused)",
    )
    parser.add_argument(
        "--allow-other-base",
        action="store_true",
        help="export adapters onto a base other than the one they were trained on (refused "
        "by default: the checkpoint's fingerprint names its base)",
    )
    parser.add_argument("--format", choices=FORMATS, default="merged")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    parser.add_argument(
        "--max-shard-size", default="5GB", help="largest safetensors shard (merged), e.g. 5GB"
    )
    parser.add_argument(
        "--step", default="best", help='with a run directory: "best", "latest" or a step number'
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from almol_jax.export.atomic import check_target
    from almol_jax.export.run import export_run
    from almol_jax.export.streaming import parse_size
    from almol_jax.run.checkpoint import CHECKPOINTS, finalized_steps
    from almol_jax.run.locate import locate_checkpoint

    step = int(args.step) if str(args.step).isdigit() else args.step
    if step not in ("best", "latest") and not isinstance(step, int):
        raise UserError(f"--step {args.step!r} is not best, latest or a step number")
    try:  # the user's mistakes, found before anything is restored or written
        parse_size(args.max_shard_size)
        run_dir, step = locate_checkpoint(args.checkpoint, step)
    except ValueError as err:  # not a run, no checkpoint in it, a bad size
        raise UserError(str(err)) from err
    if step not in finalized_steps(run_dir):
        raise UserError(
            f"run directory {str(run_dir)!r} has no complete checkpoint {step} "
            f"(complete: {finalized_steps(run_dir)})"
        )
    check_target(args.out, overwrite=args.overwrite)
    out = export_run(
        run_dir / CHECKPOINTS / str(step),
        args.out,
        format=args.format,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
        allow_other_base=args.allow_other_base,
    )
    print(f"exported {args.format} ({args.dtype}) to {out} (checkpoint step {step})")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
