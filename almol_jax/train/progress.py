"""Progress and logging of the training loop: the progress bar and the step metrics, read late.

The loop dispatches step t before it reads step t-1's metrics (host/device overlap).
`MetricsDrain` holds the device metrics of the step whose metrics are unread and, when drained,
reads them to the host, stops the run on a non-finite loss or gradient norm (FloatingPointError
naming the step), turns the step's token count into tokens/s, advances the progress bar and logs
a record every `log_every` steps (and at the last step).
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax

from almol_jax.train.losses import METRIC_NAMES

LOGGED = (*METRIC_NAMES, "grad_norm", "lr", "tokens_per_sec")


def host_metrics(metrics) -> dict[str, float]:
    """Device metrics -> {name: Python float}."""
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


class Progress:
    """tqdm progress bar on process 0 (no-op elsewhere)."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)

    def update(self, n: int, **postfix) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(**postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class MetricsDrain:
    """The unread step metrics of the loop; see the module docstring."""

    def __init__(self, logger, progress: Progress, *, log_every: int, total_steps: int, kept: Any):
        self.logger, self.progress = logger, progress
        self.log_every, self.total_steps = log_every, total_steps
        self.kept = kept  # where the last good checkpoint is (named by the non-finite error)
        self.pending: tuple[int, Any] | None = None  # (step number, device metrics)
        self.last: dict[str, float] = {}  # the last drained step's host metrics
        self.tick = time.perf_counter()

    def hold(self, step: int, metrics) -> None:
        """Keeps step `step`'s device metrics until the next drain."""
        self.pending = (step, metrics)

    def drain(self) -> None:
        """Reads the pending step's metrics: finiteness check, tokens/s, progress, logging."""
        if self.pending is None:
            return
        done, metrics = self.pending
        self.pending = None
        host = host_metrics(metrics)
        if not (math.isfinite(host["loss"]) and math.isfinite(host["grad_norm"])):
            raise FloatingPointError(
                f"non-finite loss at step {done}: loss={host['loss']}, "
                f"grad_norm={host['grad_norm']}; the last good checkpoint is kept in {self.kept}"
            )
        now = time.perf_counter()
        host["tokens_per_sec"] = host.pop("num_tokens") / max(now - self.tick, 1e-9)
        self.tick = now
        self.last = host
        self.progress.update(
            1,
            loss=f"{host['loss']:.4f}",
            lr=f"{host['lr']:.2e}",
            tok_s=f"{host['tokens_per_sec']:.0f}",
        )
        if done % self.log_every == 0 or done == self.total_steps:
            self.logger.log(done, {k: host[k] for k in LOGGED})
