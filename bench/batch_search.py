"""The largest micro-batch whose train step fits, found from the compiler's memory figures.

Each probe is a compile (1-5 minutes for a GPU target on the development host, 10-25 for a TPU
one), so the search predicts where the limit is instead of doubling and bisecting blindly: a
step's per-device memory is close to linear in its rows (the weights, the optimizer state and
the gathered layer are fixed; the activations grow with the rows), so the next probe is the
largest multiple of the data-parallel ways that a line through the measured figures keeps under
the limit. A compile that does not fit still measures (a GPU compile reports its peak; a TPU one
names the temporaries it needed), so once the limit is bracketed the line joins the largest
size that fitted and the smallest that did not. The answer is always a probed size that fitted
with the next multiple probed and not fitting: predictions only choose the probes, never the
answer. When a probe lands on the same side as the one before it, the next probe bisects
instead (halves, while nothing has fitted), so a curved figure (8 H200s: 44 GiB at 1,024 rows,
671 at 3,088) cannot stall it, nor a flat one (v5e-16 with mesh data 4: the compiler keeps
14.4-14.8 GiB per chip from 256 rows down to 224).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

GROWTH = 16  # the most one probe grows the largest fitting size by


@dataclass(frozen=True)
class Probe:
    """One compile: whether it fits, and the per-device memory it needs (GiB) when known."""

    rows: int
    fits: bool
    need_gib: float | None


def _line(points: list[Probe], limit: float) -> float | None:
    """Rows where a line reaches the limit: through the largest size that fitted and the
    smallest that did not when both were measured, else through the two nearest the limit."""
    fit = [p for p in points if p.fits]
    over = [p for p in points if not p.fits]
    if fit and over:
        pair = [max(fit, key=lambda p: p.rows), min(over, key=lambda p: p.rows)]
    else:
        pair = sorted(points, key=lambda p: abs(p.need_gib - limit))[:2]
    if len(pair) < 2:
        return None
    a, b = sorted(pair, key=lambda p: p.rows)
    if b.need_gib <= a.need_gib:
        return None
    return a.rows + (limit - a.need_gib) * (b.rows - a.rows) / (b.need_gib - a.need_gib)


def predict(probes: list[Probe], limit: float, fixed_gib: float | None) -> float | None:
    """Rows at which the per-device memory reaches ``limit``: through two measured points, or
    with one, the memory above ``fixed_gib`` (what does not grow with the rows) proportional to
    the rows, which over-estimates the growth and so errs towards fitting."""
    points = [p for p in probes if p.need_gib is not None]
    through = _line(points, limit)
    if through is not None or not points or fixed_gib is None:
        return through
    p = points[-1]
    if p.need_gib <= fixed_gib:
        return None
    return p.rows * (limit - fixed_gib) / (p.need_gib - fixed_gib)


def _next(good: int, bad: int | None, guess: float | None, step: int, bisect: bool) -> int:
    """The next size to compile: the prediction rounded down to a multiple of ``step``, kept
    strictly between the largest size that fitted and the smallest that did not."""
    if bad is None:
        grow = 2 * good
        if guess is not None and math.isfinite(guess):
            grow = min(max(int(guess) // step * step, good + step), GROWTH * good)
        return grow
    low, high = good + step, bad - step
    if bisect or guess is None or not math.isfinite(guess):
        return max(low, (good + bad) // 2 // step * step)
    return min(max(int(guess) // step * step, low), high)


def largest_fitting(
    probe: Callable[[int], Probe],
    start: int,
    step: int,
    limit_gib: float,
    fixed_gib: Callable[[], float | None] = lambda: None,
) -> tuple[int, list[Probe]]:
    """Largest multiple of ``step`` for which ``probe`` fits (0 when ``step`` does not), with
    every probe made, in order. ``fixed_gib`` gives the memory that does not grow with the rows
    once a compile has measured it."""
    probes: list[Probe] = []
    good, bad = 0, None
    rows = max(step, start - start % step)
    while True:
        result = probe(rows)
        probes.append(result)
        if result.fits:
            good = rows
        else:
            bad = rows
        if bad is not None and bad - good <= step:
            return good, probes
        stale = len(probes) > 1 and probes[-1].fits == probes[-2].fits
        rows = _next(good, bad, predict(probes, limit_gib, fixed_gib()), step, stale)


def need_gib(result: dict, arguments_gib: float | None) -> float | None:
    """Per-device memory (GiB) a compiled train step needs, from bench/aot_compile's result: its
    peak when it compiled; when a TPU compile ran out of memory, the temporaries its message
    names ("the total memory required for HLO temporaries (45.23G) exceeds available HBM") on
    top of the arguments another size measured (they do not grow with the rows)."""
    if result["compiled"]:
        return result["peak_gib"]
    temps = re.search(r"HLO temporaries \(([\d.]+)([KMGT])\)", result["detail"])
    if temps is None or arguments_gib is None:
        return None
    number, unit = temps.groups()
    return arguments_gib + float(number) * 1024.0 ** ("KMGT".index(unit) - 2)
