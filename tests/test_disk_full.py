"""A full disk while checkpointing (issue 19): a run whose output directory is a small tmpfs, sized
from a measured first checkpoint of the same tiny run so that the second checkpoint cannot fit,
ends with one `error:` line naming the path and the free space (exit 2), and the run stays
usable: exporting it afterwards takes the first (last complete) checkpoint, byte-identical to an
export of that step folder. Mounting needs root (CI runs as root); where the mount is not
permitted the test is skipped with the mount's own message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from train_runs import NO_VALIDATION, REPO, env_with_devices, train_cmd

from almol_jax.run.checkpoint import finalized_steps, latest_step

PAGE = 4096
RUN = ("train.steps=2", "checkpoint.every=1", NO_VALIDATION, "checkpoint.async_save=true")


def _usage(path: Path) -> int:
    """Bytes the files under `path` take on a tmpfs (whole pages per file)."""
    return sum(-(-p.stat().st_size // PAGE) * PAGE for p in path.rglob("*") if p.is_file())


def _run(cmd):
    return subprocess.run(
        cmd, env=env_with_devices(1), cwd=REPO, capture_output=True, text=True, timeout=400
    )


def _mount_tmpfs(where: Path, size: int) -> None:
    where.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip()
        if "permission" in message.lower() or "not permitted" in message.lower():
            pytest.skip(f"mounting a tmpfs is not permitted here: {message}")
        raise AssertionError(f"mount failed: {message}")


def _export(checkpoint: Path, out: Path, *extra: str):
    return _run(
        [
            sys.executable,
            "-m",
            "almol_jax.export",
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(out),
        ]
        + ["--format", "merged", "--dtype", "float32", *extra]
    )


@pytest.mark.slow
def test_disk_full_during_the_second_checkpoint(tmp_path):
    ref = tmp_path / "ref"
    proc = _run(train_cmd(ref, *RUN))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpts = ref / "checkpoints"
    assert finalized_steps(ref) == [1, 2]
    first = _usage(ckpts / "1")
    rest = _usage(ref) - first - _usage(ckpts / "2")
    # Room for everything the run writes plus its first checkpoint and half of another.
    size = -(-(rest + first + first // 2) // PAGE) * PAGE
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, size)
    try:
        run_dir = disk / "run"
        proc = _run(train_cmd(run_dir, *RUN))
        err = proc.stderr
        assert "could not write checkpoint 2 to " in err, err[-3000:]
        assert "disk full: No space left on device" in err and "MiB free there" in err
        assert str(run_dir / "checkpoints") in err
        assert latest_step(run_dir) == 1  # the last complete checkpoint
        assert finalized_steps(run_dir) == [1]

        latest = _export(run_dir, tmp_path / "latest", "--step", "latest")
        assert latest.returncode == 0, latest.stderr[-3000:]
        assert "(checkpoint step 1)" in latest.stdout
        step1 = _export(run_dir / "checkpoints" / "1", tmp_path / "step1")
        assert step1.returncode == 0, step1.stderr[-3000:]
        for name in ("model.safetensors", "config.json"):
            assert (tmp_path / "latest" / name).read_bytes() == (
                tmp_path / "step1" / name
            ).read_bytes()
        # The policy of every command (train.py run under almol_jax.errors.run_command): one
        # error line, exit 2, no traceback (Orbax's logged tracebacks of the failed writes are
        # dropped: run/disk.quiet_io_failure_logs).
        assert proc.returncode == 2, err[-3000:]
        # no traceback of the run itself; Orbax's background writer threads may still print
        # their own "Event loop is closed" callbacks into the closed asyncio loop as the process
        # exits after the failed write (seen 1 run in 3 here): those frames are asyncio's alone
        ours = [
            block
            for block in err.split("Traceback (most recent call last):")[1:]
            if "almol_jax" in block or "train.py" in block or "orbax" in block
        ]
        assert ours == [], err[-3000:]
        # One error line. Another thread may have left its own line unfinished when ours was
        # printed (CI once showed the message, exit 2 and no traceback of ours, but no line
        # starting with "error: "): our message is what follows "error: " on its line.
        errors = [line[line.index("error: ") :] for line in err.splitlines() if "error: " in line]
        assert len(errors) == 1, err[-3000:]
        assert errors[0].startswith("error: could not write checkpoint 2 to "), err[-3000:]
    finally:
        subprocess.run(["umount", str(disk)], check=False)
