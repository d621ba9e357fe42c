"""CLI of the preference builders: ``python -m almol_jax.preferences <command> ...``.

Each builder module registers its sub-command with ``add_cli(subparsers)`` (setting ``func``);
a new builder is added by listing its module in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib

COMMAND_MODULES = (
    "almol_jax.preferences.from_predictions",
    "almol_jax.preferences.self_generated",
)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen builder."""
    parser = argparse.ArgumentParser(
        prog="python -m almol_jax.preferences",
        description="Build preference triplets (source, chosen, rejected, direction).",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_cli(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
