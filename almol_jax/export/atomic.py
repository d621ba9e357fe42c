"""Export directories that appear whole or not at all: written beside the target, then renamed.

An export is written into a temporary sibling of its target (`.<name>.tmp-XXXX` in the same
parent, so the rename stays on one file system) and renamed into place once every file is
written: a crash or a full disk leaves the target as it was (and no temporary folder). A target
that exists and is not empty is refused unless `overwrite`, which replaces it whole (the old
directory is moved aside, the new one renamed in, the old one removed): no shard or
`model.safetensors` of an earlier export survives next to the new one. An export of a run
records which run it came from (`almol_jax_export.json`); the export after training replaces a
folder only when it is empty or such an earlier export of the same run (`holds_export`). Only the writing process
(process 0) touches the disk; every process checks the target, so all refuse together.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from almol_jax.errors import UserError
from almol_jax.export.tensors import is_writer
from almol_jax.run.disk import disk_error, io_failure

PROVENANCE = "almol_jax_export.json"


def check_target(out_dir: str | os.PathLike, *, overwrite: bool) -> Path:
    """`out_dir` as a Path, or a UserError when it is a file or a non-empty folder (and not
    `overwrite`)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"export target {str(out)!r} exists and is not a directory")
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise UserError(
            f"export directory {str(out)!r} is not empty; choose another output directory, or "
            "replace it whole with --overwrite (overwrite=True in the library)"
        )
    return out


def write_provenance(out_dir: Path, run_dir: str | os.PathLike) -> None:
    """Records in an export which run it came from (`PROVENANCE`: {"run_dir": absolute path})."""
    doc = {"run_dir": str(Path(run_dir).absolute())}
    (out_dir / PROVENANCE).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def holds_export(out_dir: str | os.PathLike, run_dir: str | os.PathLike) -> bool:
    """Whether `out_dir` is missing, empty, or an earlier export of the run `run_dir` (its
    `PROVENANCE` names that run): what an export after training may replace whole."""
    out = Path(out_dir)
    if not out.exists():
        return True
    if not out.is_dir():
        return False
    if not any(out.iterdir()):
        return True
    try:
        doc = json.loads((out / PROVENANCE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("run_dir") == str(Path(run_dir).absolute())


def _replace(tmp: Path, out: Path) -> None:
    """Renames the finished `tmp` to `out`, replacing what `out` held."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / "content")
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old / "content", out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_directory(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yields the temporary folder to write an export into; renames it to `out_dir` when the
    block ends normally, removes it when it raises (an I/O error becomes a DiskWriteError)."""
    out = check_target(out_dir, overwrite=overwrite).absolute()
    if not is_writer():
        yield out.parent / f".{out.name}.tmp-not-written"
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as err:
        raise disk_error("the export", out, err) from err
    try:
        yield tmp
        _replace(tmp, out)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if io_failure(err) and not isinstance(err, UserError):
            raise disk_error("the export", out, err) from err
        raise
