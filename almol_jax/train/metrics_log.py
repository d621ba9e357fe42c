"""Metric sinks of a run: metrics.jsonl (always), TensorBoard events (tensorboardX), optional W&B.

One JSON object per logged step, keys as TRL logs them (loss, nll_loss, rewards/chosen,
rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, logps/rejected, grad_norm,
lr, tokens_per_sec, step); validation records carry the same names prefixed "eval/" (eval/loss,
eval/rewards/accuracies, ...). Only process 0 writes. Weights & Biases is imported lazily and
only when a project is configured. `truncate_metrics` drops the records a resumed run will write
again. A last line cut short by a kill (no newline, not JSON) is dropped with a warning when the
file is read or a run resumes; any other line that is not a JSON object is a UserError naming
file:line. A failed write (a full disk) ends the run with a DiskWriteError naming the file.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from almol_jax.errors import UserError
from almol_jax.run.disk import disk_error

METRICS_FILE = "metrics.jsonl"
log = logging.getLogger(__name__)


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
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as err:
            raise disk_error("the metrics", self.run_dir / METRICS_FILE, err) from err
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


def _records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) of every complete line of a metrics file (see the module docstring)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")  # the last item is "" when the file ends with a newline
    out = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            out.append((line, record))
        elif lineno == len(lines):  # no newline after it: a write cut short by a kill
            log.warning("%s:%d: dropped a truncated last line %r", path, lineno, line[:80])
        else:
            raise UserError(f"{path}:{lineno}: not a JSON object (a damaged metrics file)")
    return out


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of <run_dir>/metrics.jsonl, in order."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [record for _, record in _records(path)]


def truncate_metrics(run_dir: str | Path, last_step: int) -> None:
    """Drops metrics.jsonl records after `last_step` (they belong to the lost, un-checkpointed
    tail of an interrupted run) and a truncated last line, so a resumed run's file matches an
    uninterrupted one. The file is rewritten through a temporary file and a rename."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = [line for line, record in _records(path) if record.get("step", 0) <= last_step]
    tmp = path.with_name(METRICS_FILE + ".tmp")
    try:
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        raise disk_error("the metrics", path, err) from err
