"""Running one stage of an arm (train.py, eval.py, the preference builder) as a child process.

Each stage is the project's own command line, run with this Python from the repository root,
its output kept in ``DIR/logs/<stage>.log``. While it runs, a progress bar follows it: training
steps read from the run's metrics.jsonl, evaluation directions from the report files appearing.
A finished stage leaves a marker (``<dir>/.experiment_stage.json``, holding the hash of what it
ran) so a re-run of the experiment skips it; a stage that failed or was interrupted runs again
(train.py resumes from its own checkpoints).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from almol_jax.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
MARKER = ".experiment_stage.json"
POLL_SECONDS = 1.0
LOG_TAIL_LINES = 25


def stage_key(inputs: Sequence[Path], args: Sequence[str]) -> str:
    """The hash of what a stage runs: its command line and the bytes of the files it reads
    (its config, its data, the marker of the stage it builds on)."""
    h = hashlib.sha256()
    for arg in args:
        h.update(arg.encode() + b"\0")
    for path in inputs:
        h.update(str(path).encode() + b"\0")
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def is_done(directory: Path, key: str) -> bool:
    """Whether ``directory`` holds a finished stage with this key."""
    marker = directory / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("key") == key
    except json.JSONDecodeError:
        return False


def set_aside_if_stale(directory: Path, key: str) -> Path | None:
    """Moves ``directory`` to ``<name>.previous-<k>`` (k the first free number) when it holds a
    stage that FINISHED with other inputs (its marker's key differs), so the stage starts afresh
    instead of resuming another configuration's checkpoints; returns where it went (None: kept).
    An unfinished stage (no marker) stays, to be resumed."""
    marker = directory / MARKER
    if not marker.is_file() or is_done(directory, key):
        return None
    k = 1
    while (target := directory.with_name(f"{directory.name}.previous-{k}")).exists():
        k += 1
    directory.rename(target)
    return target


def mark_done(directory: Path, key: str, times: dict[str, float], command: list[str]) -> None:
    """Leaves the finished-stage marker in ``directory`` (``times``: wall and CPU seconds)."""
    directory.mkdir(parents=True, exist_ok=True)
    record = {"key": key, **times, "command": command}
    (directory / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def stage_times(directory: Path) -> dict[str, float]:
    """{"wall", "cpu"} seconds of a finished stage, from its marker (markers of the first
    version hold "seconds" of wall time only: CPU 0)."""
    record = json.loads((directory / MARKER).read_text(encoding="utf-8"))
    wall = record.get("wall", record.get("seconds", 0.0))
    return {"wall": float(wall), "cpu": float(record.get("cpu", 0.0))}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def training_progress(run_dir: Path) -> Callable[[], int]:
    """The last logged training step of ``run_dir`` (0 before the first)."""
    path = run_dir / "metrics.jsonl"

    def current() -> int:
        if not path.is_file():
            return 0
        step = 0
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                step = max(step, int(json.loads(line).get("step", 0)))
            except (json.JSONDecodeError, ValueError, TypeError):
                continue
        return step

    return current


def files_progress(paths: Sequence[Path]) -> Callable[[], int]:
    """How many of ``paths`` exist."""
    return lambda: sum(p.is_file() for p in paths)


def stage_environment(compile_cache: Path) -> dict[str, str]:
    """This process's environment, with JAX's persistent compilation cache in ``compile_cache``
    unless the user set one (JAX_COMPILATION_CACHE_DIR): stages that compile the same programs
    (the seeds of an arm, every evaluation of one model shape) compile them once."""
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(compile_cache))
    return env


def run_stage(
    label: str,
    args: list[str],
    log: Path,
    *,
    total: int,
    unit: str,
    progress: Callable[[], int],
    show: bool = True,
    env: dict[str, str] | None = None,
) -> dict[str, float]:
    """Runs ``python <args>`` from the repository root (in ``env``, default this process's
    environment); returns its wall and CPU seconds (the CPU time of the child and its own
    children: comparable across loads, unlike the wall).

    A failure raises UserError naming the stage and its log, with the log's last lines.
    """
    command = [sys.executable, *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    start, cpu = time.perf_counter(), _children_cpu()
    bar = tqdm(
        total=total, desc=label, unit=unit, dynamic_ncols=True, disable=not show, leave=False
    )
    with log.open("w", encoding="utf-8") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        child = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, env=env
        )
        try:
            while child.poll() is None:
                time.sleep(POLL_SECONDS)
                bar.n = min(progress(), total)
                bar.refresh()
        except BaseException:
            child.terminate()  # SIGTERM: train.py saves a checkpoint and exits 0
            child.wait()
            raise
        finally:
            bar.close()
    times = {"wall": time.perf_counter() - start, "cpu": _children_cpu() - cpu}
    if child.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]
        raise UserError(
            f"{label} failed (exit status {child.returncode}); its log is {log}:\n"
            + "\n".join(tail)
        )
    return times
