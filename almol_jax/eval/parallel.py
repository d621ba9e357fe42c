"""Row-parallel scoring: worker processes and this process share one list of rows.

``ChunkMap(fn, items, state=..., num_workers=n)`` calls ``fn(state, chunk) -> list`` on chunks
of ``items`` and returns the concatenated results in input order. ``n - 1`` worker processes
take chunks from the front of the list and this process takes them from the back, so ``n``
processes compute and none waits on a queue. Chunks are sized when taken (guided scheduling: a
share of what is left, never below ``min_chunk``), so they shrink towards the end and everyone
finishes within a few rows of each other; nothing is taken in advance.

Used as a context manager the workers start at entry, and this process can do other work first
(smiles2caption's METEOR: nltk import, WordNet, all rows) before it joins in:

    with ChunkMap(fn, items, state=state, num_workers=n) as work:
        other = something_else()  # runs while the workers compute
        rows = work.results()  # this process takes the chunks that are left, then collects

``map_chunks(fn, items, ...)`` is the one-call form. With the ``fork`` start method the workers
inherit ``fn``, ``items`` and ``state`` (nothing is pickled but the results); otherwise they are
pickled once per worker. Fewer than ``MIN_ITEMS_FOR_POOL`` items, or ``num_workers=1``, run here.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import pickle
import queue
import sys
import traceback
from collections.abc import Callable, Sequence

MIN_ITEMS_FOR_POOL = 256


def default_num_workers() -> int:
    """CPUs this process may use (sched affinity), at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def default_start_method() -> str:
    """``fork`` (cheap, inherits state), unless JAX (multithreaded, fork-unsafe) is loaded."""
    if sys.platform != "linux" or "jax" in sys.modules:
        return "forkserver" if sys.platform == "linux" else "spawn"
    return "fork"


def _take(bounds, lock, from_front: bool, processes: int, min_chunk: int) -> tuple[int, int] | None:
    """Claims the next chunk ``[start, stop)`` of the rows still untaken (``bounds`` = [front,
    back]), from the front or the back; None when nothing is left."""
    with lock:
        front, back = bounds[0], bounds[1]
        left = back - front
        if left <= 0:
            return None
        size = min(left, max(min_chunk, math.ceil(left / (2 * processes))))
        if from_front:
            bounds[0] = front + size
            return front, front + size
        bounds[1] = back - size
        return back - size, back


def _worker_main(fn, items, state, bounds, lock, results, processes, min_chunk) -> None:
    try:
        while (span := _take(bounds, lock, True, processes, min_chunk)) is not None:
            results.put((span, list(fn(state, items[span[0] : span[1]]))))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
        where = f"in a scoring worker process:\n{traceback.format_exc()}"
        try:
            e.add_note(where)
            pickle.dumps(e)  # the queue pickles in a background thread, too late to fall back
        except Exception:  # noqa: BLE001 - an exception that does not pickle
            e = RuntimeError(where)
        results.put((None, e))


class ChunkMap:
    """``fn(state, chunk)`` over chunks of ``items`` in ``num_workers`` processes (this one
    included); see the module docstring."""

    def __init__(
        self,
        fn: Callable[[object, Sequence], list],
        items: Sequence,
        *,
        state=None,
        num_workers: int | None = None,
        progress: bool = False,
        desc: str = "",
        start_method: str | None = None,
        min_chunk: int = 8,
    ):
        num_workers = default_num_workers() if num_workers is None else num_workers
        if num_workers < 1:
            raise ValueError(f"{num_workers=} must be >= 1")
        if min_chunk < 1:
            raise ValueError(f"{min_chunk=} must be >= 1")
        self._fn, self._items, self._state = fn, list(items), state
        self._processes = 1 if len(self._items) < MIN_ITEMS_FOR_POOL else num_workers
        self._progress, self._desc, self._min_chunk = progress, desc, min_chunk
        self._start_method = start_method
        self._workers: list = []
        self._bounds = self._lock = self._queue = None
        self._collected = False

    def __enter__(self) -> ChunkMap:
        if self._processes > 1:
            ctx = mp.get_context(self._start_method or default_start_method())
            self._bounds = ctx.Array("q", [0, len(self._items)], lock=False)
            self._lock = ctx.Lock()
            self._queue = ctx.Queue()
            args = (
                self._fn,
                self._items,
                self._state,
                self._bounds,
                self._lock,
                self._queue,
                self._processes,
                self._min_chunk,
            )
            for _ in range(self._processes - 1):
                worker = ctx.Process(target=_worker_main, args=args, daemon=True)
                worker.start()
                self._workers.append(worker)
        return self

    def __exit__(self, *exc_info) -> None:
        for worker in self._workers:
            if not self._collected:  # an error, or results() never called: stop them
                worker.terminate()
            worker.join()
        if self._queue is not None:
            self._queue.close()
            self._queue.join_thread()
        self._workers = []

    def results(self) -> list:
        """Takes part until every chunk is done; the results in input order."""
        n = len(self._items)
        bar = None
        if self._progress and n:
            from tqdm import tqdm

            bar = tqdm(total=n, desc=self._desc, leave=False)
        try:
            if self._processes == 1:
                self._collected = True
                return self._serial(bar)
            done: dict[int, tuple[int, list]] = {}
            covered = 0
            while (span := self._take_back()) is not None:
                done[span[0]] = (span[1], list(self._fn(self._state, self._items[slice(*span)])))
                covered += span[1] - span[0]
                covered += self._drain(done, bar, block=False)
                if bar is not None:
                    bar.update(span[1] - span[0])
            while covered < n:
                covered += self._drain(done, bar, block=True)
            self._collected = True
        finally:
            if bar is not None:
                bar.close()
        out: list = []
        for start in sorted(done):
            out.extend(done[start][1])
        return out

    def _serial(self, bar) -> list:
        if bar is None:
            return list(self._fn(self._state, self._items))
        out: list = []
        step = max(1, len(self._items) // 20)
        for i in range(0, len(self._items), step):
            out.extend(self._fn(self._state, self._items[i : i + step]))
            bar.update(min(step, len(self._items) - i))
        return out

    def _take_back(self) -> tuple[int, int] | None:
        return _take(self._bounds, self._lock, False, self._processes, self._min_chunk)

    def _drain(self, done: dict, bar, *, block: bool) -> int:
        """Collects the worker results that have arrived (waits for one when ``block``); returns
        the number of rows they cover. A worker error is raised here; a worker that died without
        reporting is an error too, not a hang."""
        covered = 0
        while True:
            try:
                span, value = self._queue.get(timeout=0.05) if block else self._queue.get_nowait()
            except queue.Empty:
                if block and not any(w.is_alive() for w in self._workers):
                    try:  # a result may have landed just before the last worker exited
                        span, value = self._queue.get(timeout=0.5)
                    except queue.Empty:
                        codes = [w.exitcode for w in self._workers]
                        raise RuntimeError(
                            f"a scoring worker process died (exit codes {codes})"
                        ) from None
                else:
                    if block:
                        continue
                    return covered
            if span is None:
                raise value
            done[span[0]] = (span[1], value)
            covered += span[1] - span[0]
            if bar is not None:
                bar.update(span[1] - span[0])
            if block:
                return covered


def map_chunks(
    fn: Callable[[object, Sequence], list],
    items: Sequence,
    *,
    state=None,
    num_workers: int | None = None,
    progress: bool = False,
    desc: str = "",
    start_method: str | None = None,
) -> list:
    """``fn(state, chunk)`` over chunks of ``items``; results concatenated in order."""
    with ChunkMap(
        fn,
        items,
        state=state,
        num_workers=num_workers,
        progress=progress,
        desc=desc,
        start_method=start_method,
    ) as work:
        return work.results()
