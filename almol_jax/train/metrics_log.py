"""Metric sinks of a run: metrics.jsonl (always), TensorBoard events (tensorboardX), optional W&B.

One JSON object per logged step, keys as TRL logs them (loss, nll_loss, rewards/chosen,
rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, logps/rejected, grad_norm,
lr, tokens_per_sec, step); validation records carry the same names prefixed "eval/" (eval/loss,
eval/rewards/accuracies, ...). Only process 0 writes. Weights & Biases is imported lazily and
only when a project is configured. `truncate_metrics` drops the records a resumed run will write
again.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def _plain(value: Any) -> Any:
    """A JSON-able Python number (NaN/inf become None, as strict JSON has no NaN)."""
    if isinstance(value, (int, str)) or value is None:
        return value
    value = float(value)
    return value if math.isfinite(value) else None


class MetricsLogger:
    """Writes metric records to metrics.jsonl, TensorBoard and W&B (process 0 only)."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        wandb_config: dict | None = None,
        enabled: bool = True,
    ):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tb"))
        if wandb_project:
            import wandb  # lazily: optional dependency

            self._wandb = wandb.init(
                project=wandb_project, dir=str(self.run_dir), config=wandb_config, resume="allow"
            )

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Appends one record {"step": step, **metrics} to every sink."""
        if not self.enabled:
            return
        record = {k: _plain(v) for k, v in metrics.items()}
        record["step"] = int(step)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, global_step=int(step))
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "step"}, step=int(step))

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of <run_dir>/metrics.jsonl, in order."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def truncate_metrics(run_dir: str | Path, last_step: int) -> None:
    """Drops metrics.jsonl records after `last_step` (they belong to the lost, un-checkpointed
    tail of an interrupted run) so a resumed run's file matches an uninterrupted one."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line and json.loads(line).get("step", 0) <= last_step
    ]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
