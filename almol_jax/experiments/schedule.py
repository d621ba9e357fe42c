"""The experiment's stages as a graph: each starts once the stages it needs have finished, at
most ``jobs`` at a time. Of the stages ready to start, those that more stages wait on (directly
or not) go first, so the work that unblocks the rest is not left for last (a training before an
evaluation that nothing reads); ties go in the order the stages were added.

Each running stage gets a ``Slot``: the line of its progress bar and the event that tells it to
stop. A stage that fails stops the others (their children get SIGTERM: train.py saves a
checkpoint, so a re-run resumes them) and no new stage starts; the first failure is raised once
the running stages have ended. Ctrl-C in the main thread does the same and re-raises.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

WAIT_SECONDS = 0.5  # how often the main thread wakes (so Ctrl-C is handled promptly)


class Cancelled(Exception):
    """A stage ended early because another stage failed or the run was interrupted."""


@dataclass(frozen=True)
class Slot:
    """Where a running stage draws its bar, and the event that asks it to stop."""

    position: int
    stop: threading.Event


@dataclass(frozen=True)
class Task:
    """One stage: ``run(slot)`` does it; ``needs`` names the tasks that must finish first."""

    name: str
    run: Callable[[Slot], None]
    needs: tuple[str, ...] = ()


def _check(tasks: Sequence[Task]) -> None:
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names repeat: {names}")
    seen: set[str] = set()
    for task in tasks:  # needs point backwards: no cycles, nothing unknown
        unknown = [n for n in task.needs if n not in seen]
        if unknown:
            raise ValueError(f"task {task.name} needs {unknown}, not added before it")
        seen.add(task.name)


def _waiting_on(tasks: Sequence[Task]) -> dict[str, int]:
    """How many tasks wait on each task, directly or through others."""
    later: dict[str, set[str]] = {t.name: set() for t in tasks}
    for task in reversed(tasks):  # a task's dependents come after it
        for need in task.needs:
            later[need] |= {task.name} | later[task.name]
    return {name: len(names) for name, names in later.items()}


def run_graph(tasks: Sequence[Task], jobs: int) -> None:
    """Runs ``tasks`` (each needing only tasks added before it), up to ``jobs`` at once."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    _check(tasks)
    waiting = _waiting_on(tasks)
    stop = threading.Event()
    pending = sorted(tasks, key=lambda t: -waiting[t.name])  # stable: ties keep their order
    done: set[str] = set()
    running: dict[Future, tuple[Task, int]] = {}
    free = list(range(jobs))
    error: BaseException | None = None
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="stage") as pool:
        try:
            while pending or running:
                if error is None:
                    for task in [t for t in pending if set(t.needs) <= done][: len(free)]:
                        pending.remove(task)
                        position = free.pop(0)
                        future = pool.submit(task.run, Slot(position, stop))
                        running[future] = (task, position)
                else:
                    pending.clear()
                finished, _ = wait(running, timeout=WAIT_SECONDS, return_when=FIRST_COMPLETED)
                for future in finished:
                    task, position = running.pop(future)
                    free = sorted([*free, position])
                    failure = future.exception()
                    if failure is None:
                        done.add(task.name)
                    elif error is None and not isinstance(failure, Cancelled):
                        error = failure
                        stop.set()
        except BaseException:  # Ctrl-C (or SIGTERM turned into it): stop every running stage
            stop.set()
            wait(running)
            raise
    if error is not None:
        raise error
