"""Orbax checkpoints of a run: the manager of `<run_dir>/checkpoints` and what it records.

Layout (docs/DESIGN.md, "Checkpoint contract"): `<run_dir>/checkpoints/<step>/` with the items
  "trainable"  the trained variables (adapters only for LoRA runs, all Params otherwise)
  "opt_state"  the optax state
  "meta"       JSON: step, data-iterator state, seed (all randomness is a function of seed + step)
               and the run's fingerprint (run/fingerprint.py: what the trainables depend on)
  "metrics"    JSON {"val_loss": ...} on steps validated with a finite loss (how "best" is
               found: a NaN or infinite validation loss never makes a checkpoint "best")
Saves are asynchronous (arrays are copied to host before `save` returns, so the step may donate
them right after). Only finalized checkpoints count (`is_finalized`: Orbax renames a finished
`<step>.orbax-checkpoint-tmp-*` folder to `<step>` and writes `commit_success.txt` and the commit
time in `_CHECKPOINT_METADATA`): latest / best selection and restores skip any other folder, and a
writable checkpointer moves such leftovers to `<run_dir>/incomplete_checkpoints/` (with a warning)
so that Orbax never counts or restores them. An I/O error while saving (a full disk included)
ends the run with a `DiskWriteError` naming the path and the free space; the checkpoints
finalized before it stay restorable. The manager keeps the last `keep_last` checkpoints and, when `keep_best`, the one with the lowest
validation loss. Which step a path or "best" / "latest" names: `locate.py`; a trained run ready
for inference: `restore.py`.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import shutil
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm
from orbax.checkpoint._src.path import step as orbax_step

from almol_jax.errors import UserError
from almol_jax.run.disk import disk_error, io_failure, quiet_io_failure_logs

CHECKPOINTS = "checkpoints"
INCOMPLETE = "incomplete_checkpoints"
VAL_LOSS = "val_loss"
COMMIT_FILE = "commit_success.txt"
METADATA_FILE = "_CHECKPOINT_METADATA"
log = logging.getLogger(__name__)


def is_finalized(step_dir: Path) -> bool:
    """Whether `step_dir` is a finished checkpoint: a step-number name Orbax counts as
    finalized, with its commit marker and the commit time in its metadata."""
    if not step_dir.name.isdigit() or not orbax_step.is_checkpoint_finalized(step_dir):
        return False
    if not (step_dir / COMMIT_FILE).is_file():
        return False
    try:
        meta = json.loads((step_dir / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("commit_timestamp_nsecs") is not None


def _checkpoints_dir(run_dir_or_directory: str | Path) -> Path:
    path = Path(run_dir_or_directory)
    return path if path.name == CHECKPOINTS else path / CHECKPOINTS


def finalized_steps(run_dir: str | Path) -> list[int]:
    """The steps of the finished checkpoints of a run directory, ascending."""
    directory = _checkpoints_dir(run_dir)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if is_finalized(p))


def _val_loss(step_dir: Path) -> float | None:
    """The finite validation loss recorded with a checkpoint, or None."""
    try:
        metrics = json.loads((step_dir / "metrics" / "metrics").read_text(encoding="utf-8"))
        value = float(metrics[VAL_LOSS])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if math.isfinite(value) else None


def best_finalized_step(run_dir: str | Path) -> int | None:
    """The finished checkpoint with the lowest finite validation loss (the later on a tie)."""
    directory = _checkpoints_dir(run_dir)
    scored = [
        (loss, -s)
        for s in finalized_steps(directory)
        if (loss := _val_loss(directory / str(s))) is not None
    ]
    return -min(scored)[1] if scored else None


def _close_pending_writes() -> None:
    """Closes the writer coroutines a failed Orbax save left suspended, now, while the
    interpreter is alive: finalised at exit, they print tracebacks after the error line."""
    for obj in gc.get_objects():
        if (
            isinstance(obj, types.CoroutineType)
            and obj.cr_frame is not None
            and f"{os.sep}orbax{os.sep}" in obj.cr_code.co_filename
        ):
            try:
                obj.close()
            except (RuntimeError, ValueError):  # running elsewhere, or it awaited on close
                pass


def set_aside_incomplete(directory: Path) -> list[Path]:
    """Moves every unfinished step folder of `directory` (an interrupted save, a partial copy)
    to `<run_dir>/incomplete_checkpoints/`, so it is never counted or restored; returns the
    new paths (each named in a warning)."""
    if not directory.is_dir():
        return []
    moved = []
    for path in sorted(directory.iterdir()):
        unfinished = orbax_step.is_tmp_checkpoint(path) or (
            path.name.isdigit() and not is_finalized(path)
        )
        if not path.is_dir() or not unfinished:
            continue
        target = directory.parent / INCOMPLETE / path.name
        n = 1
        while target.exists():
            target, n = directory.parent / INCOMPLETE / f"{path.name}.{n}", n + 1
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(target))
        log.warning("incomplete checkpoint %s moved to %s (it is never restored)", path, target)
        moved.append(target)
    return moved


def _best_fn(metrics: dict) -> float:
    return float(metrics[VAL_LOSS])


def _abstract(tree):
    """ShapeDtypeStructs (with shardings) of a tree of arrays: an Orbax restore target."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )


class RunCheckpointer:
    """CheckpointManager over `<run_dir>/checkpoints` for TrainState + meta JSON."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        keep_last: int = 2,
        keep_best: bool = True,
        async_save: bool = True,
        read_only: bool = False,
    ):
        if keep_last < 1:
            raise ValueError(f"{keep_last=} must be >= 1")
        policies = [cm.LatestN(keep_last)]
        if keep_best:
            policies.append(
                cm.BestN(
                    get_metric_fn=lambda m: -_best_fn(m),
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=cm.AnyPreservationPolicy(policies),
            best_fn=_best_fn,
            best_mode="min",
            enable_async_checkpointing=async_save,
            read_only=read_only,
            create=not read_only,
        )
        self.directory = Path(run_dir).absolute() / CHECKPOINTS
        self._pending: int | None = None
        if not read_only:
            quiet_io_failure_logs()  # a failed save is reported once, by its DiskWriteError
            self._set_aside_incomplete()
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def _set_aside_incomplete(self) -> None:
        """Process 0 moves unfinished step folders aside before Orbax lists the steps."""
        if jax.process_index() == 0:
            set_aside_incomplete(self.directory)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("almol_jax: incomplete checkpoints set aside")

    def require_finalized(self, step: int) -> None:
        """A UserError unless checkpoint `step` is a finished checkpoint of this run."""
        if not is_finalized(self.directory / str(int(step))):
            raise UserError(
                f"{self.directory} has no complete checkpoint {int(step)} (complete: "
                f"{finalized_steps(self.directory)})"
            )

    def _guarded(self, call: Callable[[], Any], step: int | None) -> Any:
        """`call()`; an I/O failure of a save (this one or an earlier asynchronous one) becomes a
        DiskWriteError naming the checkpoint, the path and the free space."""
        failure = None
        try:
            return call()
        except Exception as err:
            if not io_failure(err):
                raise
            what = "a checkpoint" if step is None else f"checkpoint {step}"
            failure = disk_error(what, self.directory, err)
        _close_pending_writes()
        raise failure

    def save(
        self, step: int, state, meta: dict[str, Any], *, val_loss: float | None = None
    ) -> None:
        """Saves `state` (TrainState: trainable, opt_state) and `meta` as checkpoint `step`."""
        args = ocp.args.Composite(
            trainable=ocp.args.StandardSave(state.trainable),
            opt_state=ocp.args.StandardSave(state.opt_state),
            meta=ocp.args.JsonSave(dict(meta, step=int(step))),
        )
        # a non-finite validation loss never ranks a checkpoint as "best"
        metrics = (
            None if val_loss is None or not math.isfinite(val_loss) else {VAL_LOSS: float(val_loss)}
        )
        self._guarded(  # also raises the error of the previous (asynchronous) save
            lambda: self.manager.save(int(step), args=args, metrics=metrics, force=True),
            self._pending if self._pending is not None else step,
        )
        self._pending = int(step)

    def latest_step(self) -> int | None:
        """The newest finished checkpoint's step, or None."""
        steps = finalized_steps(self.directory)
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The finished checkpoint with the lowest validation loss, or None."""
        return best_finalized_step(self.directory)

    def restore(self, step: int, state) -> tuple[Any, dict[str, Any]]:
        """(state, meta) of checkpoint `step`; `state` is a TrainState whose arrays give shapes,
        dtypes and shardings of the target (it may be abstract)."""
        self.require_finalized(step)
        restored = self.manager.restore(
            int(step),
            args=ocp.args.Composite(
                trainable=ocp.args.StandardRestore(_abstract(state.trainable)),
                opt_state=ocp.args.StandardRestore(_abstract(state.opt_state)),
                meta=ocp.args.JsonRestore(),
            ),
        )
        new_state = state.replace(
            trainable=restored.trainable,
            opt_state=restored.opt_state,
            step=jax.numpy.asarray(restored.meta["step"], jax.numpy.int32),
        )
        return new_state, restored.meta

    def restore_trainable(self, step: int, trainable) -> Any:
        """Only the trainable variables of checkpoint `step` (inference: no optimizer state)."""
        self.require_finalized(step)
        restored = self.manager.restore(
            int(step),
            args=ocp.args.Composite(trainable=ocp.args.StandardRestore(_abstract(trainable))),
        )
        return restored.trainable

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are committed (a failed one raises)."""
        self._guarded(self.manager.wait_until_finished, self._pending)
        self._pending = None

    def close(self) -> None:
        self.wait()
        self.manager.close()


def latest_step(run_dir: str | Path) -> int | None:
    """The newest finished checkpoint step of a run directory, or None."""
    steps = finalized_steps(run_dir)
    return steps[-1] if steps else None


def best_step(run_dir: str | Path) -> int | None:
    """The finished checkpoint step with the lowest validation loss in a run directory, or None."""
    return best_finalized_step(run_dir)


def read_meta(run_dir: str | Path, step: int) -> dict[str, Any]:
    """The "meta" JSON of checkpoint `step` (step, data-iterator state, seed)."""
    path = Path(run_dir) / CHECKPOINTS / str(step) / "meta" / "metadata"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"checkpoint metadata {str(path)!r} is damaged ({err})") from err
    restored = RunCheckpointer(run_dir, read_only=True).manager.restore(
        int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore())
    )
    return restored.meta
