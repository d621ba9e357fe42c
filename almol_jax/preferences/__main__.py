"""CLI of the preference builders: ``python -m almol_jax.preferences <command> ...``.

Each builder module registers its sub-command with ``add_cli(subparsers)`` (setting ``func``);
a new builder is added by listing its module in ``COMMAND_MODULES``. A user's mistake ends with one
``error: ...`` line and exit status 2 (almol_jax/errors.py; ``--debug`` shows its traceback).
"""

from __future__ import annotations

import argparse
import importlib

COMMAND_MODULES = (
    "almol_jax.preferences.from_predictions",
    "almol_jax.preferences.self_generated",
)


def main(argv: list[str] | None = None) -> int:
    """The command under the error policy: a user's mistake is one `error:` line and exit status 2
    (almol_jax.errors.run_command; `--debug` shows its traceback), a bug a traceback."""
    from almol_jax.errors import run_command

    return run_command(run, argv)


def run(argv: list[str]) -> int:
    """Parse the command line and run the chosen builder; a user's mistake raises UserError."""
    parser = argparse.ArgumentParser(
        prog="python -m almol_jax.preferences",
        description="Build preference triplets (source, chosen, rejected, direction).",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of a user error")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_cli(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
