"""Orbax checkpoints of a run: the manager of `<run_dir>/checkpoints` and what it records.

Layout (docs/DESIGN.md, "Checkpoint contract"): `<run_dir>/checkpoints/<step>/` with the items
  "trainable"  the trained variables (adapters only for LoRA runs, all Params otherwise)
  "opt_state"  the optax state
  "meta"       JSON: step, data-iterator state, seed (all randomness is a function of seed + step)
               and the run's fingerprint (run/fingerprint.py: what the trainables depend on)
  "metrics"    JSON {"val_loss": ...} on steps validated with a finite loss (how "best" is
               found: a NaN or infinite validation loss never makes a checkpoint "best")
Saves are asynchronous (arrays are copied to host before `save` returns, so the step may donate
them right after); an interrupted save leaves only a temporary folder that is never restored.
The manager keeps the last `keep_last` checkpoints and, when `keep_best`, the one with the lowest
validation loss. Which step a path or "best" / "latest" names: `locate.py`; a trained run ready
for inference: `restore.py`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

CHECKPOINTS = "checkpoints"
VAL_LOSS = "val_loss"


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
        self.manager = ocp.CheckpointManager(self.directory, options=options)

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
        self.manager.save(int(step), args=args, metrics=metrics, force=True)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The kept checkpoint with the lowest validation loss, or None."""
        return self.manager.best_step()

    def restore(self, step: int, state) -> tuple[Any, dict[str, Any]]:
        """(state, meta) of checkpoint `step`; `state` is a TrainState whose arrays give shapes,
        dtypes and shardings of the target (it may be abstract)."""
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
        restored = self.manager.restore(
            int(step),
            args=ocp.args.Composite(trainable=ocp.args.StandardRestore(_abstract(trainable))),
        )
        return restored.trainable

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def latest_step(run_dir: str | Path) -> int | None:
    """The newest complete checkpoint step of a run directory, or None."""
    if not (Path(run_dir) / CHECKPOINTS).is_dir():
        return None
    ckpt = RunCheckpointer(run_dir, read_only=True)
    return ckpt.latest_step()


def best_step(run_dir: str | Path) -> int | None:
    """The checkpoint step with the lowest validation loss in a run directory, or None."""
    if not (Path(run_dir) / CHECKPOINTS).is_dir():
        return None
    return RunCheckpointer(run_dir, read_only=True).best_step()


def read_meta(run_dir: str | Path, step: int) -> dict[str, Any]:
    """The "meta" JSON of checkpoint `step` (step, data-iterator state, seed)."""
    path = Path(run_dir) / CHECKPOINTS / str(step) / "meta" / "metadata"
    if path.is_file():
        return json.loads(path.read_text())
    restored = RunCheckpointer(run_dir, read_only=True).manager.restore(
        int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore())
    )
    return restored.meta
