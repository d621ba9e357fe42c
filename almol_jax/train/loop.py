"""The training loop as a library function: `run_training(cfg) -> summary`.

Builds everything from a RunConfig (mesh, model, tokenizer, data, optimizer), resumes from the
newest complete checkpoint of `cfg.output_dir` (unless checkpoint.resume is false), then runs the
jitted train step. Host/device overlap: step t is dispatched before step t-1's metrics are read.
Every `train.log_every` steps a record goes to metrics.jsonl / TensorBoard / W&B and the progress
bar; validation runs every `train.eval_every` steps (0: once per epoch) and at the end, and each
validation saves a checkpoint whose validation loss ranks it for "best". A non-finite loss (or
gradient norm) stops the run with a FloatingPointError naming the step, before any checkpoint of
that step is written, so the last good checkpoint stays intact. SIGTERM saves a checkpoint and
returns normally (train.py then exits 0).

Run directory: config.yaml, tokenizer/, data_report.json, metrics.jsonl, tb/, checkpoints/.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from almol_jax.data.prefix_sharing import is_indexed_batch
from almol_jax.sharding import batch_shard_count, logical_sharding, state_shardings
from almol_jax.train import optimizer as opt_lib
from almol_jax.train import step as step_lib
from almol_jax.train.checkpoint import RunCheckpointer
from almol_jax.train.losses import METRIC_NAMES
from almol_jax.train.metrics_log import METRICS_FILE, MetricsLogger
from almol_jax.train.signals import StopRequest, install_sigterm

LOGGED = (*METRIC_NAMES, "grad_norm", "lr")


def full_shardings(state: nnx.State, mesh, rules) -> nnx.State:
    """A tree with the structure of `state` (Variables kept) whose leaves are NamedShardings."""
    prefix = state_shardings(state, mesh, rules)
    return jax.tree.map(
        lambda sharding, var: var.replace(value=sharding),
        prefix,
        state,
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )


def batch_shardings(batch: dict[str, Any], mesh, rules) -> dict[str, NamedSharding]:
    """Each batch array sharded on its leading (batch) axis, the rest replicated."""
    return {
        k: logical_sharding(("batch",) + (None,) * (np.ndim(v) - 1), mesh, rules)
        for k, v in batch.items()
    }


def to_global(local_batch: dict[str, np.ndarray], shardings, num_processes: int):
    """Host-local rows -> global jax.Arrays (this process's rows of every array).

    Multi-process: each process passes the pairs it reads. Plain layout (chosen rows then
    rejected rows): the global batch keeps all chosen rows, then all rejected rows, so the chosen
    and rejected halves are assembled separately and concatenated on device by `_join_halves`.
    Indexed layout (prefix-shared: one row per pair): every array is split by rows, the global
    batch being the processes' rows in process order (the same pair order as the plain layout).
    """
    if num_processes == 1:
        return {k: jax.device_put(v, shardings[k]) for k, v in local_batch.items()}
    indexed = is_indexed_batch(local_batch)
    out = {}
    for key, value in local_batch.items():
        if indexed or key == "pair_mask":
            global_shape = (value.shape[0] * num_processes,) + value.shape[1:]
            out[key] = jax.make_array_from_process_local_data(shardings[key], value, global_shape)
            continue
        half = value.shape[0] // 2
        global_shape = (half * num_processes,) + value.shape[1:]
        parts = [
            jax.make_array_from_process_local_data(shardings[key], part, global_shape)
            for part in (value[:half], value[half:])
        ]
        out[key] = parts
    return out


def _join_halves(batch):
    return {
        k: jnp.concatenate(v, axis=0) if isinstance(v, (list, tuple)) else v
        for k, v in batch.items()
    }


def _finite_tree(tree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.floating)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _host_metrics(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def _truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Drops metrics.jsonl records after `last_step` (they belong to the lost, un-checkpointed
    tail of an interrupted run) so a resumed run's file matches an uninterrupted one."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line and json.loads(line).get("step", 0) <= last_step
    ]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


class _Progress:
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


def run_training(
    cfg,
    *,
    batch_hook: Callable[[int, dict], dict] | None = None,
    stop: StopRequest | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) the run described by `cfg`; returns a summary dict.

    `batch_hook(step, host_batch) -> host_batch` may edit each host batch before it is placed
    (debugging and tests: e.g. injecting a NaN); the batch is in the indexed layout when
    data.prefix_sharing resolves on (train/data_setup.py). `stop` lets a caller request a clean stop
    (checkpoint, then return) like SIGTERM does.
    """
    from almol_jax import host_allocator
    from almol_jax.config import dump_config
    from almol_jax.train import data_setup
    from almol_jax.train.distributed import maybe_initialize
    from almol_jax.train.setup import build_run_model, make_run_mesh

    maybe_initialize(cfg.mesh)
    host_allocator.settle(cfg.runtime.host_allocator, jax.default_backend())
    num_processes = jax.process_count()
    primary = jax.process_index() == 0
    run_dir = Path(cfg.output_dir).absolute()
    if primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")

    mesh = make_run_mesh(cfg)
    rules = cfg.mesh.rules
    data = data_setup.build_data(
        cfg, run_dir=run_dir, primary=primary, batch_shards=batch_shard_count(mesh, rules)
    )
    total_steps = data.total_steps
    t = cfg.train
    warmup = opt_lib.warmup_steps_for(total_steps, t.warmup_ratio)
    schedule = opt_lib.make_schedule(
        peak_lr=t.learning_rate, total_steps=total_steps, warmup_steps=warmup, kind=t.schedule
    )
    tx = opt_lib.make_optimizer(
        schedule,
        b1=t.adam_b1,
        b2=t.adam_b2,
        eps=t.adam_eps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
    )
    settings = step_lib.StepSettings(
        objective=cfg.objective, grad_accum=t.grad_accum, tx=tx, schedule=schedule
    )

    model = build_run_model(cfg, mesh=mesh)
    graphdef, trainable, frozen = nnx.split(model, opt_lib.trainable_filter(cfg.lora.enabled), ...)
    del model
    replicated = NamedSharding(mesh, PartitionSpec())
    trainable_sh = full_shardings(trainable, mesh, rules)
    frozen_sh = full_shardings(frozen, mesh, rules)
    state_sh = step_lib.state_shardings(trainable_sh, tx, trainable, replicated)
    state = jax.jit(lambda tr: step_lib.init_train_state(tr, tx), out_shardings=state_sh)(trainable)
    del trainable

    ckpt = RunCheckpointer(
        run_dir,
        keep_last=cfg.checkpoint.keep_last,
        keep_best=cfg.checkpoint.keep_best,
        async_save=cfg.checkpoint.async_save,
    )
    start = 0
    latest = ckpt.latest_step() if cfg.checkpoint.resume else None
    if latest is not None:
        state, meta = ckpt.restore(latest, state)
        data.train.restore(meta["data"])
        start = int(meta["step"])
    if primary:
        _truncate_metrics(run_dir, start)

    example = data.train.peek()
    batch_sh = batch_shardings(example, mesh, rules)
    train_fn = step_lib.build_train_step(
        state_sharding=state_sh,
        frozen_sharding=frozen_sh,
        batch_sharding=batch_sh,
        replicated=replicated,
    )
    eval_fn = step_lib.build_eval_step(
        trainable_sharding=trainable_sh,
        frozen_sharding=frozen_sh,
        batch_sharding=batch_sh,
        replicated=replicated,
    )
    join = jax.jit(_join_halves, out_shardings=batch_sh)
    finite = jax.jit(_finite_tree, out_shardings=replicated)

    def place(host_batch):
        placed = to_global(host_batch, batch_sh, num_processes)
        return join(placed) if num_processes > 1 and not is_indexed_batch(host_batch) else placed

    def validate_pass(batches, limit: int) -> tuple[dict[str, float], float]:
        """(pair-weighted metric sums, pairs) over the first `limit` batches (0: all)."""
        totals: dict[str, float] = {}
        pairs = 0.0
        for i, host_batch in enumerate(batches):
            if limit and i >= limit:
                break
            m = _host_metrics(
                eval_fn(graphdef, state.trainable, frozen, place(host_batch), settings)
            )
            n = m.pop("num_pairs")
            pairs += n
            for k, v in m.items():
                totals[k] = totals.get(k, 0.0) + v * n
        return totals, pairs

    def validate(step: int) -> dict[str, float] | None:
        """eval/<metric> over the validation pairs; with both directions in the split, also
        eval/<direction>/<metric> from a pass over each direction (train.eval_batches shared
        between them), the pooled figures being their pair-weighted mean."""
        by_direction = data.validation_by_direction
        if not by_direction:
            totals, pairs = validate_pass(data.validation(), t.eval_batches)
            return {f"eval/{k}": v / pairs for k, v in totals.items()} if pairs else None
        limit = -(-t.eval_batches // len(by_direction)) if t.eval_batches else 0
        out: dict[str, float] = {}
        pooled: dict[str, float] = {}
        pooled_pairs = 0.0
        for direction, make in by_direction.items():
            totals, pairs = validate_pass(make(), limit)
            if not pairs:
                continue
            out.update({f"eval/{direction}/{k}": v / pairs for k, v in totals.items()})
            out[f"eval/{direction}/num_pairs"] = pairs
            pooled_pairs += pairs
            for k, v in totals.items():
                pooled[k] = pooled.get(k, 0.0) + v
        if not pooled_pairs:
            return None
        return {f"eval/{k}": v / pooled_pairs for k, v in pooled.items()} | out

    def save(step: int, val_loss: float | None = None) -> None:
        if not bool(finite(state.trainable)):
            raise FloatingPointError(f"non-finite parameters after step {step}; not saving")
        ckpt.save(step, state, {"data": data.train.state(), "seed": cfg.seed}, val_loss=val_loss)

    logger = MetricsLogger(
        run_dir,
        tensorboard=cfg.logging.tensorboard,
        wandb_project=cfg.logging.wandb_project,
        enabled=primary,
    )
    stop = stop or StopRequest()
    restore_handler = install_sigterm(stop)
    progress = _Progress(total_steps, start, enabled=primary)
    eval_every = t.eval_every or data.steps_per_epoch
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] | None = None
    stopped = None
    pending = None  # (step number, device metrics) of the step whose metrics are unread
    tick = time.perf_counter()

    def drain() -> None:
        """Reads the pending step's metrics: finiteness check, logging, progress."""
        nonlocal pending, tick, last_train
        if pending is None:
            return
        done, metrics = pending
        pending = None
        host = _host_metrics(metrics)
        if not (math.isfinite(host["loss"]) and math.isfinite(host["grad_norm"])):
            raise FloatingPointError(
                f"non-finite loss at step {done}: loss={host['loss']}, "
                f"grad_norm={host['grad_norm']}; the last good checkpoint is kept in {ckpt.directory}"
            )
        now = time.perf_counter()
        host["tokens_per_sec"] = host.pop("num_tokens") / max(now - tick, 1e-9)
        tick = now
        last_train = host
        progress.update(
            1,
            loss=f"{host['loss']:.4f}",
            lr=f"{host['lr']:.2e}",
            tok_s=f"{host['tokens_per_sec']:.0f}",
        )
        if done % t.log_every == 0 or done == total_steps:
            logger.log(done, {k: host[k] for k in LOGGED + ("tokens_per_sec",)})

    try:
        step = start
        while step < total_steps:
            host_batch = next(data.train)
            if batch_hook is not None:
                host_batch = batch_hook(step, host_batch)
            state, metrics = train_fn(graphdef, state, frozen, place(host_batch), settings)
            drain()  # step t-1's metrics, read after step t was dispatched
            step += 1
            pending = (step, metrics)
            at_end = step == total_steps
            do_eval = data.has_validation and (step % eval_every == 0 or at_end)
            do_save = (
                (cfg.checkpoint.every and step % cfg.checkpoint.every == 0) or at_end or do_eval
            )
            stop_now = stop.agreed()
            if do_eval or do_save or stop_now:
                drain()
            val_loss = None
            if do_eval:
                last_eval = validate(step)
                if last_eval is not None:
                    logger.log(step, last_eval)
                    val_loss = last_eval["eval/loss"]
            if do_save or stop_now:
                save(step, val_loss)
            if stop_now:
                stopped = stop.reason or "stop requested"
                break
        drain()
    finally:
        restore_handler()
        progress.close()
        logger.close()
        ckpt.wait()
    summary = {
        "run_dir": str(run_dir),
        "step": int(step),
        "total_steps": int(total_steps),
        "stopped": stopped,
        "train": last_train,
        "eval": last_eval,
        "best_step": ckpt.best_step(),
        "latest_step": ckpt.latest_step(),
    }
    ckpt.close()
    return summary
