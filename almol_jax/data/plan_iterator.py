"""The iterator protocol shared by the training loop's indexed-batch sources.

`PlanFollowingIterator` wraps a plain `almol_jax.data.batching.BatchIterator` and follows its
plan: the same pairs in the same order per step, the same resumable `state()`/`restore()`, the
same epochs; a subclass only says how one planned global batch becomes this host's arrays
(`batch(epoch, position)`): one row per pair (prefix_sharing.PairRowIterator) or several pairs
per row (packing.PackedIterator).
"""

from __future__ import annotations

import numpy as np


class PlanFollowingIterator:
    """Same plan, state and epochs as the wrapped plain iterator; subclasses build batches."""

    def __init__(self, inner):
        self.inner = inner

    @property
    def batches_per_epoch(self) -> int:
        return self.inner.batches_per_epoch

    @property
    def lengths(self) -> tuple[int, ...]:
        return self.inner.lengths

    def state(self) -> dict[str, int]:
        return self.inner.state()

    def restore(self, state: dict[str, int]) -> None:
        self.inner.restore(state)

    def padding_stats(self, epoch: int = 0):
        """The plain plan's statistics (the data report describes the plain batches)."""
        return self.inner.padding_stats(epoch)

    def batch(self, epoch: int, position: int) -> dict[str, np.ndarray]:
        """This host's arrays of planned batch `position` of epoch `epoch`."""
        raise NotImplementedError

    def _next_position(self) -> tuple[int, int]:
        epoch, position = self.inner.epoch, self.inner.position
        if position >= self.inner.batches_per_epoch:
            if not self.inner.loop:
                raise StopIteration
            epoch, position = epoch + 1, 0
        return epoch, position

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        epoch, position = self._next_position()
        out = self.batch(epoch, position)
        self.inner.epoch, self.inner.position = epoch, position + 1
        return out

    def peek(self) -> dict[str, np.ndarray]:
        """The batch next() would return, without advancing."""
        return self.batch(*self._next_position())
