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
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from almol_jax.errors import UserError
from almol_jax.experiments.schedule import Cancelled

REPO_ROOT = Path(__file__).resolve().parents[2]
MARKER = ".experiment_stage.json"
POLL_SECONDS = 1.0
LOG_TAIL_LINES = 25
CPU_JOBS = 2  # stages at once when they run on the CPU (stage_jobs)


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


def stage_environment(compile_cache: Path, jobs: int = 1) -> dict[str, str]:
    """This process's environment, with JAX's persistent compilation cache in ``compile_cache``
    unless the user set one (JAX_COMPILATION_CACHE_DIR): stages that compile the same programs
    (the seeds of an arm, every evaluation of one model shape) compile them once. With more than
    one stage at a time, a GPU is not preallocated by each (XLA_PYTHON_CLIENT_PREALLOCATE=false
    unless set)."""
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(compile_cache))
    if jobs > 1:
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return env


def stage_jobs(requested: str, env: dict[str, str]) -> int:
    """How many stages run at once. ``auto``: 2 when the stages' JAX runs on the CPU (one
    stage's start-up, data loading and host-side scoring leave cores idle that another stage's
    compute can use), 1 on an accelerator (a stage holds every device). The backend is asked in
    a child process, so this one never holds a device."""
    if requested != "auto":
        try:
            jobs = int(requested)
        except ValueError:
            jobs = 0
        if jobs < 1:
            raise UserError(f"--jobs must be auto or a whole number >= 1, got {requested!r}")
        return jobs
    if env.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return CPU_JOBS
    probe = [sys.executable, "-c", "import jax; print(jax.default_backend())"]
    try:
        out = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return 1
    backend = out.stdout.strip().splitlines()[-1:] if out.returncode == 0 else []
    return CPU_JOBS if backend == ["cpu"] else 1


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
    position: int = 0,
    stop: threading.Event | None = None,
) -> dict[str, float]:
    """Runs ``python <args>`` from the repository root (in ``env``, default this process's
    environment); returns its wall and CPU seconds (the CPU time of the child and its own
    children, from its own exit status: comparable across loads, unlike the wall, and apart
    from any stage running beside it). Its bar is drawn on line ``position``; when ``stop`` is
    set the child gets SIGTERM (train.py saves a checkpoint and exits) and Cancelled is raised.

    A failure raises UserError naming the stage and its log, with the log's last lines.
    """
    command = [sys.executable, *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    bar = tqdm(
        total=total, desc=label, unit=unit, dynamic_ncols=True, disable=not show, leave=False,
        position=position,
    )  # fmt: skip
    with log.open("w", encoding="utf-8") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        child = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, env=env
        )
        try:
            usage = _wait(child, lambda: _move(bar, min(progress(), total)), stop)
        except BaseException:
            child.terminate()
            child.wait()
            raise
        finally:
            bar.close()
    times = {"wall": time.perf_counter() - start, "cpu": usage.ru_utime + usage.ru_stime}
    code = child.returncode
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]
        raise UserError(
            f"{label} failed (exit status {code}); its log is {log}:\n" + "\n".join(tail)
        )
    return times


def _wait(
    child: subprocess.Popen, tick: Callable[[], None], stop: threading.Event | None
) -> resource.struct_rusage:
    """Polls ``child`` until it exits (reaped here: its returncode is set, its own resource
    usage returned). Calls ``tick`` (the bar) each poll; raises Cancelled when ``stop`` is set
    (the caller terminates the child)."""
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid == child.pid:
            child.returncode = os.waitstatus_to_exitcode(status)
            return usage
        if stop is None:
            time.sleep(POLL_SECONDS)
        elif stop.wait(POLL_SECONDS):
            raise Cancelled(f"stopped: {child.args}")
        tick()


def _move(bar: tqdm, n: int) -> None:
    bar.n = n
    bar.refresh()
