"""Failed writes of a run directory (disk full, any I/O error) as one user-facing error.

Checkpoints, exports and the metrics file all end a run the same way when the disk refuses a
write: a `DiskWriteError` (a `UserError`) naming what was being written, the path, the error and
the free space left on that disk (`shutil.disk_usage`). `io_failure` recognises such a failure
also when a library wrapped it (Orbax and TensorStore re-raise I/O errors as other exceptions
whose text or cause carries the OS error).
"""

from __future__ import annotations

import errno
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


def disk_error(what: str, path: str | Path, err: BaseException) -> DiskWriteError:
    """The error that ends a command whose write of `what` to `path` failed with `err`."""
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
    full = full or "No space left on device" in str(err)
    hint = "; free some space (or choose another directory) and run the command again"
    label = "disk full" if full else "I/O error"
    return DiskWriteError(
        f"could not write {what} to {path} ({label}: {reason.splitlines()[0][:300]}; "
        f"{free_space(path)} there){hint}"
    )
