"""Orbax checkpoints of a run, and `restore_for_inference` for generation, evaluation and export.

Layout (docs/DESIGN.md, "Checkpoint contract"): `<run_dir>/checkpoints/<step>/` with the items
  "trainable"  the trained variables (adapters only for LoRA runs, all Params otherwise)
  "opt_state"  the optax state
  "meta"       JSON: step, data-iterator state, seed (all randomness is a function of seed + step)
  "metrics"    JSON {"val_loss": ...} on steps that were validated (how "best" is found)
Saves are asynchronous (arrays are copied to host before `save` returns, so the step may donate
them right after); an interrupted save leaves only a temporary folder that is never restored.
The manager keeps the last `keep_last` checkpoints and, when `keep_best`, the one with the lowest
validation loss.
"""

from __future__ import annotations

import json
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
        metrics = None if val_loss is None else {VAL_LOSS: float(val_loss)}
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


def _run_and_step(path: str | Path) -> tuple[Path, int | None]:
    """(run_dir, explicit step or None) of a run directory or a checkpoints/<step> folder."""
    path = Path(path).absolute()
    if (path / "config.yaml").is_file():
        return path, None
    if path.name.isdigit() and path.parent.name == CHECKPOINTS:
        return path.parent.parent, int(path.name)
    raise ValueError(
        f"{str(path)!r} is neither a run directory (with config.yaml) nor a "
        f"<run_dir>/{CHECKPOINTS}/<step> checkpoint folder"
    )


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


def _inference_mesh(cfg, make_run_mesh):
    """The run's own mesh when this process's devices fit it, else all devices on "fsdp" (e.g. a
    pod-trained run evaluated on one accelerator)."""
    try:
        return make_run_mesh(cfg)
    except ValueError:
        from almol_jax.sharding import make_mesh

        return make_mesh(None)


def restore_for_inference(run_dir_or_step_dir: str | Path, mesh=None, *, step: str | int = "best"):
    """(run_config, model, tokenizer) of a trained run, ready for generation or export.

    `run_dir_or_step_dir` is a run directory (then `step`: "best" = lowest validation loss,
    falling back to the latest; "latest"; or a number) or a `<run_dir>/checkpoints/<step>` folder.
    The base is rebuilt from the run's config (HF source, or the same seeded random init) and the
    checkpoint's trainable variables (adapters for LoRA runs) are restored into it.
    `mesh=None`: the run's mesh when the devices here fit it, else all devices on "fsdp".
    """
    from flax import nnx

    from almol_jax.config import load_config
    from almol_jax.train.optimizer import trainable_filter
    from almol_jax.train.setup import build_run_model, load_run_tokenizer, make_run_mesh

    run_dir, explicit = _run_and_step(run_dir_or_step_dir)
    cfg = load_config(run_dir / "config.yaml")
    ckpt = RunCheckpointer(run_dir, read_only=True)
    if explicit is not None:
        chosen = explicit
    elif step == "best":
        chosen = ckpt.best_step()
        chosen = ckpt.latest_step() if chosen is None else chosen
    elif step == "latest":
        chosen = ckpt.latest_step()
    else:
        chosen = int(step)
    if chosen is None:
        raise ValueError(f"run directory {str(run_dir)!r} holds no complete checkpoint")
    if chosen not in ckpt.manager.all_steps():
        raise ValueError(
            f"checkpoint step {chosen} is not in {str(run_dir)!r}; steps: {ckpt.manager.all_steps()}"
        )
    if mesh is None:
        mesh = _inference_mesh(cfg, make_run_mesh)
    model = build_run_model(cfg, mesh=mesh)
    graphdef, trainable, rest = nnx.split(model, trainable_filter(cfg.lora.enabled), ...)
    trainable = ckpt.restore_trainable(chosen, trainable)
    model = nnx.merge(graphdef, trainable, rest)
    return cfg, model, load_run_tokenizer(run_dir, cfg)
