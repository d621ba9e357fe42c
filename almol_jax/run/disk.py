"""Failed writes of a run directory (disk full, any I/O error) as one user-facing error.

Checkpoints, exports and the metrics file all end a run the same way when the disk refuses a
write: a `DiskWriteError` (a `UserError`) naming what was being written, the path, the error and
the free space left on that disk (`shutil.disk_usage`). `io_failure` recognises such a failure
also when a library wrapped it (Orbax and TensorStore re-raise I/O errors as other exceptions
whose text or cause carries the OS error). Those libraries also log each failed write of their
background threads with a traceback (absl, asyncio loggers): `quiet_io_failure_logs` drops such
records, since the one error line says it all.
"""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path

from almol_jax.errors import UserError

_IO_WORDS = ("No space left on device", "Disk quota exceeded", "Read-only file system")


class DiskWriteError(UserError):
    """A write to the run or export directory failed (disk full or another I/O error)."""


def io_failure(err: BaseException) -> bool:
    """Whether `err` (or an exception it was raised from) is an I/O failure of the disk."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and not isinstance(current, FileNotFoundError):
            return True
        if any(word in str(current) for word in _IO_WORDS):
            return True
        current = current.__cause__ or current.__context__
    return False


class _DropIOFailures(logging.Filter):
    """Drops log records that carry an I/O failure (reported once, by the DiskWriteError)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, BaseException) and io_failure(exc))


_DROP = _DropIOFailures()


def quiet_io_failure_logs(names: tuple[str, ...] = ("absl", "asyncio")) -> None:
    """Installs (once) the filter that drops logged tracebacks of I/O failures on `names`."""
    for name in names:
        logger = logging.getLogger(name)
        if _DROP not in logger.filters:
            logger.addFilter(_DROP)


def free_space(path: str | Path) -> str:
    """Free bytes on the disk holding `path` (its nearest existing parent), as text."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return "unknown free space"
    return f"{free / 2**20:.1f} MiB free"


def _reason(err: BaseException) -> str:
    """The OS's words for the failure (libraries bury them in long messages)."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err)
    word = next((w for w in _IO_WORDS if w in text), None)
    return word if word is not None else (text.splitlines() or [type(err).__name__])[0][:200]


def disk_error(what: str, path: str | Path, err: BaseException) -> DiskWriteError:
    """The error that ends a command whose write of `what` to `path` failed with `err`."""
    reason = _reason(err)
    full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
    full = full or reason in _IO_WORDS[:2]
    label = "disk full" if full else "I/O error"
    return DiskWriteError(
        f"could not write {what} to {path} ({label}: {reason}; {free_space(path)} there); "
        "free some space (or choose another directory) and run the command again"
    )
