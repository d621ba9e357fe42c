"""The one error policy of every command: a user's mistake is one `error: ...` line, a bug a traceback.

A user's mistake (a bad config key or value, a missing or malformed file, an incompatible run
directory, a full disk) is raised as a `UserError` (or a subclass) at the boundary where it is
found, with a message that names the bad value and, where there is one, the way out. Every
command's `main` runs under `run_command`, which prints such an error as one line
`error: <message>` on stderr and returns exit status 2; any other exception is a bug and keeps
Python's traceback (exit status 1). `--debug` on the command line, or `ALMOL_JAX_DEBUG=1` in the
environment, shows the traceback of user errors too.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence

DEBUG_FLAG = "--debug"
DEBUG_ENV = "ALMOL_JAX_DEBUG"
USER_ERROR_STATUS = 2


class UserError(Exception):
    """A mistake of the command's user, reported as one line (not a bug of almol_jax)."""


class ConfigError(UserError, ValueError):
    """A bad config key or value (a ValueError too, for library callers that catch those)."""


def debug_requested(argv: Sequence[str], environ=os.environ) -> bool:
    """Whether the user asked for tracebacks of user errors too."""
    return DEBUG_FLAG in argv or environ.get(DEBUG_ENV, "") not in ("", "0")


def run_command(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Runs `main(argv)` (argv without `--debug`) under the error policy; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    try:
        status = main([a for a in argv if a != DEBUG_FLAG])
    except UserError as err:
        if debug:
            traceback.print_exc()
        sys.stderr.flush()  # one write of the whole line, after what is already buffered
        sys.stderr.write(f"error: {err}\n")
        sys.stderr.flush()
        return USER_ERROR_STATUS
    return 0 if status is None else int(status)
