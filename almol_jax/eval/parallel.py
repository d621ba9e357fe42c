"""Row-parallel scoring over worker processes, with a tqdm progress bar.

``map_chunks(fn, items, state=...)`` splits ``items`` into contiguous chunks, calls
``fn(state, chunk) -> list`` on each (in worker processes when ``num_workers > 1``) and returns
the concatenated results in input order. ``state`` is handed to each worker once, through the
pool initializer (with the ``fork`` start method it is inherited, not pickled), so heavy
read-only objects such as the WordNet reader are built once in the parent. Workers keep it in
``_WORKER_STATE``: process-local storage that exists only inside pool workers.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

_WORKER_STATE: dict = {}
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


def _init_worker(state) -> None:
    _WORKER_STATE["state"] = state


def _run_in_worker(fn: Callable, chunk: Sequence) -> list:
    return fn(_WORKER_STATE["state"], chunk)


def map_chunks(
    fn: Callable[[object, Sequence], list],
    items: Sequence,
    *,
    state=None,
    num_workers: int | None = None,
    chunks_per_worker: int = 4,
    progress: bool = False,
    desc: str = "",
    start_method: str | None = None,
) -> list:
    """``fn(state, chunk)`` over contiguous chunks of ``items``; results concatenated in order."""
    items = list(items)
    num_workers = default_num_workers() if num_workers is None else num_workers
    if num_workers < 1:
        raise ValueError(f"{num_workers=} must be >= 1")
    if not items:
        return []
    if num_workers == 1 or len(items) < MIN_ITEMS_FOR_POOL:
        if not progress:
            return list(fn(state, items))
        from tqdm import tqdm

        out: list = []
        step = max(1, len(items) // 20)
        with tqdm(total=len(items), desc=desc, leave=False) as bar:
            for i in range(0, len(items), step):
                out.extend(fn(state, items[i : i + step]))
                bar.update(min(step, len(items) - i))
        return out
    n_chunks = min(len(items), num_workers * chunks_per_worker)
    bounds = [round(i * len(items) / n_chunks) for i in range(n_chunks + 1)]
    chunks = [items[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    context = mp.get_context(start_method or default_start_method())
    results: list = [None] * len(chunks)
    with ProcessPoolExecutor(
        max_workers=min(num_workers, len(chunks)),
        mp_context=context,
        initializer=_init_worker,
        initargs=(state,),
    ) as pool:
        futures = {pool.submit(_run_in_worker, fn, chunk): i for i, chunk in enumerate(chunks)}
        if progress:
            from concurrent.futures import as_completed

            from tqdm import tqdm

            with tqdm(total=len(items), desc=desc, leave=False) as bar:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update(len(chunks[futures[future]]))
        else:
            for future, i in futures.items():
                results[i] = future.result()
    out = []
    for part in results:
        out.extend(part)
    return out
