"""The training loop as a library function: `run_training(cfg) -> summary`.

Builds everything from a RunConfig (mesh, model, tokenizer, data, optimizer), resumes from the
newest complete checkpoint of `cfg.output_dir` (unless checkpoint.resume is false; a checkpoint
trained with another model, tokenizer, LoRA or objective is refused before anything in the run
directory is written: train/resume.py), then runs the jitted train step. Every checkpoint's meta
records the run's fingerprint (run/fingerprint.py). Host/device overlap: step t is dispatched before step t-1's metrics are read
(train/progress.py). Every `train.log_every` steps a record goes to metrics.jsonl / TensorBoard /
W&B and the progress bar; validation (train/validation.py) runs every `train.eval_every` steps
(0: once per epoch) and at the end, and each validation saves a checkpoint whose validation loss
ranks it for "best". A non-finite loss (or gradient norm) stops the run with a FloatingPointError
naming the step, before any checkpoint of that step is written, so the last good checkpoint stays
intact. SIGTERM saves a checkpoint and returns normally (train.py then exits 0). Placement on the
mesh (shardings, host batches, the jitted steps) is train/placement.py.

Run directory: config.yaml, config_history.jsonl, tokenizer/, data_report.json, metrics.jsonl,
tb/, checkpoints/.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from almol_jax.cpu import runtime as cpu_runtime
from almol_jax.run.checkpoint import RunCheckpointer
from almol_jax.run.fingerprint import FINGERPRINT, run_fingerprint
from almol_jax.run.setup import build_run_model, make_run_mesh
from almol_jax.sharding import batch_shard_count
from almol_jax.train import data_setup, placement
from almol_jax.train import optimizer as opt_lib
from almol_jax.train import step as step_lib
from almol_jax.train.distributed import maybe_initialize
from almol_jax.train.metrics_log import MetricsLogger, truncate_metrics
from almol_jax.train.progress import MetricsDrain, Progress, host_metrics
from almol_jax.train.resume import record_run, restore_run, resumable_step
from almol_jax.train.signals import StopRequest, install_sigterm
from almol_jax.train.validation import flag_non_finite, ranking_loss, validate


def step_settings(cfg, total_steps: int) -> step_lib.StepSettings:
    """The objective, accumulation, optimizer and learning-rate schedule of a run."""
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
    return step_lib.StepSettings(
        objective=cfg.objective, grad_accum=t.grad_accum, tx=tx, schedule=schedule
    )


def run_training(
    cfg,
    *,
    batch_hook: Callable[[int, dict], dict] | None = None,
    stop: StopRequest | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) the run described by `cfg`; returns a summary dict.

    `batch_hook(step, host_batch) -> host_batch` may edit each host batch (the indexed layout of
    almol_jax.data.prefix_sharing) before it is placed (debugging and tests: e.g. injecting a
    NaN). `stop` lets a caller request a clean stop (checkpoint, then return) like SIGTERM does.
    """
    maybe_initialize(cfg.mesh)
    cpu_runtime.settle(cfg.runtime)
    primary = jax.process_index() == 0
    run_dir = Path(cfg.output_dir).absolute()
    fingerprint = run_fingerprint(cfg)
    latest = resumable_step(cfg, run_dir, fingerprint)  # checked before anything is written

    mesh = make_run_mesh(cfg)
    rules = cfg.mesh.rules
    data = data_setup.build_data(cfg, batch_shards=batch_shard_count(mesh, rules))
    settings = step_settings(cfg, data.total_steps)
    model = placement.place_model(
        build_run_model(cfg, mesh=mesh),
        lora=cfg.lora.enabled,
        tx=settings.tx,
        mesh=mesh,
        rules=rules,
    )
    ckpt = RunCheckpointer(
        run_dir,
        keep_last=cfg.checkpoint.keep_last,
        keep_best=cfg.checkpoint.keep_best,
        async_save=cfg.checkpoint.async_save,
    )
    start = 0
    if latest is not None:
        model.state, start = restore_run(ckpt, latest, model.state, data)
    if primary:
        record_run(cfg, run_dir, data, start)
        truncate_metrics(run_dir, start)
    steps = placement.build_steps(model, data.train.peek(), mesh, rules)
    loop = TrainingLoop(
        cfg, data, model, steps, settings, ckpt, batch_hook=batch_hook, fingerprint=fingerprint
    )
    return loop.run(start, stop or StopRequest(), run_dir=run_dir, primary=primary)


class TrainingLoop:
    """The step loop of one run: train steps, validation, checkpoints, the stop request.

    Its state is the placed model (`model.state` replaced after every step) and the data
    iterator; run() returns the summary dict of run_training.
    """

    def __init__(
        self, cfg, data, model, steps, settings, ckpt, *, batch_hook=None, fingerprint=None
    ):
        self.cfg, self.data, self.model, self.steps = cfg, data, model, steps
        self.settings, self.ckpt, self.batch_hook = settings, ckpt, batch_hook
        self.eval_every = cfg.train.eval_every or data.steps_per_epoch
        self.last_eval: dict[str, float] | None = None
        self.fingerprint: dict | None = fingerprint  # what the trainables depend on (meta)

    def run(self, start: int, stop: StopRequest, *, run_dir: Path, primary: bool) -> dict:
        """Steps from `start` to data.total_steps (or until `stop`); returns the summary."""
        cfg, total_steps = self.cfg, self.data.total_steps
        logger = MetricsLogger(
            run_dir,
            tensorboard=cfg.logging.tensorboard,
            wandb_project=cfg.logging.wandb_project,
            enabled=primary,
        )
        restore_handler = install_sigterm(stop)
        progress = Progress(total_steps, start, enabled=primary)
        drain = MetricsDrain(
            logger,
            progress,
            log_every=cfg.train.log_every,
            total_steps=total_steps,
            kept=self.ckpt.directory,
        )
        stopped = None
        try:
            step = start
            while step < total_steps and stopped is None:
                self.train_step(step, drain)
                step += 1
                stopped = self.after_step(step, drain, logger, stop)
            drain.drain()
        finally:
            restore_handler()
            progress.close()
            logger.close()
            self.ckpt.wait()
        summary = {
            "run_dir": str(run_dir),
            "step": int(step),
            "total_steps": int(total_steps),
            "stopped": stopped,
            "train": drain.last,
            "eval": self.last_eval,
            "best_step": self.ckpt.best_step(),
            "latest_step": self.ckpt.latest_step(),
        }
        self.ckpt.close()
        return summary

    def train_step(self, step: int, drain: MetricsDrain) -> None:
        """Dispatches update `step` + 1, then reads the previous step's metrics."""
        host_batch = next(self.data.train)
        if self.batch_hook is not None:
            host_batch = self.batch_hook(step, host_batch)
        m = self.model
        m.state, metrics = self.steps.train(
            m.graphdef, m.state, m.frozen, self.steps.place(host_batch), self.settings
        )
        drain.drain()  # step t-1's metrics, read after step t was dispatched
        drain.hold(step + 1, metrics)

    def after_step(self, step: int, drain: MetricsDrain, logger, stop: StopRequest) -> str | None:
        """Validation and checkpoint due after update `step`; the stop reason if stopping."""
        at_end = step == self.data.total_steps
        do_eval = self.data.has_validation and (step % self.eval_every == 0 or at_end)
        every = self.cfg.checkpoint.every
        do_save = (every and step % every == 0) or at_end or do_eval
        stop_now = stop.agreed()
        if do_eval or do_save or stop_now:
            drain.drain()
        val_loss = None
        if do_eval:
            self.last_eval = self.validate()
            if self.last_eval is not None:
                logger.log(step, self.last_eval)
            val_loss = ranking_loss(self.last_eval, step)
        if do_save or stop_now:
            self.save(step, val_loss)
        return (stop.reason or "stop requested") if stop_now else None

    def validate(self) -> dict[str, float] | None:
        """The eval/ metrics of the current parameters (train/validation.py)."""
        m, steps = self.model, self.steps

        def evaluate(host_batch):
            batch = steps.place(host_batch)
            return host_metrics(
                steps.eval(m.graphdef, m.state.trainable, m.frozen, batch, self.settings)
            )

        return flag_non_finite(validate(evaluate, self.data, self.cfg.train.eval_batches))

    def save(self, step: int, val_loss: float | None = None) -> None:
        """A checkpoint of step `step` (FloatingPointError instead if a parameter is not finite)."""
        state = self.model.state
        if not bool(self.steps.finite(state.trainable)):
            raise FloatingPointError(f"non-finite parameters after step {step}; not saving")
        meta = {"data": self.data.train.state(), "seed": self.cfg.seed}
        if self.fingerprint is not None:
            meta[FINGERPRINT] = self.fingerprint
        self.ckpt.save(step, state, meta, val_loss=val_loss)
