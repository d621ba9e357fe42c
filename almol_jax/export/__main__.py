"""CLI: `python -m almol_jax.export --checkpoint RUN_DIR[/checkpoints/STEP] --out DIR ...`."""

from __future__ import annotations

import argparse
import sys

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
    from almol_jax.export.run import export_run

    step = int(args.step) if str(args.step).isdigit() else args.step
    out = export_run(
        args.checkpoint,
        args.out,
        format=args.format,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        step=step,
    )
    print(f"exported {args.format} ({args.dtype}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
