"""A trained run ready for generation, evaluation and export: `restore_for_inference`.

The base is rebuilt from the run's config (HF source, or the same seeded random init, see
`setup.build_run_model`) and the checkpoint's trainable variables (adapters for LoRA runs) are
restored into it; no optimizer state is read. The checkpoint's fingerprint (run/fingerprint.py)
must name the base rebuilt here: loading the trainables onto another base is refused unless
asked for (`allow_other_base=True`, the commands' --allow-other-base).
"""

from __future__ import annotations

from pathlib import Path

from almol_jax.run.checkpoint import RunCheckpointer, read_meta
from almol_jax.run.fingerprint import FINGERPRINT, base_fingerprint, check_base
from almol_jax.run.locate import RunDirectoryError, locate_checkpoint
from almol_jax.run.setup import build_run_model, load_run_tokenizer, make_run_mesh


def _inference_mesh(cfg):
    """The run's own mesh when this process's devices fit it, else all devices on "fsdp" (e.g. a
    pod-trained run evaluated on one accelerator)."""
    try:
        return make_run_mesh(cfg)
    except ValueError:
        from almol_jax.sharding import make_mesh

        return make_mesh(None)


def restore_for_inference(
    run_dir_or_step_dir: str | Path,
    mesh=None,
    *,
    step: str | int = "best",
    allow_other_base: bool = False,
):
    """(run_config, model, tokenizer) of a trained run, ready for generation or export.

    `run_dir_or_step_dir` is a run directory (then `step`: "best" = lowest validation loss,
    falling back to the latest; "latest"; or a number) or a `<run_dir>/checkpoints/<step>` folder.
    `mesh=None`: the run's mesh when the devices here fit it, else all devices on "fsdp".
    A base that is not the one the checkpoint was trained on (its fingerprint's model.* and
    base.* keys differ) is a RunDirectoryError unless `allow_other_base`.
    """
    from flax import nnx

    from almol_jax.config import load_config
    from almol_jax.model.lora import trainable_filter

    run_dir, chosen = locate_checkpoint(run_dir_or_step_dir, step)
    cfg = load_config(run_dir / "config.yaml")
    ckpt = RunCheckpointer(run_dir, read_only=True)
    if chosen not in ckpt.manager.all_steps():
        raise RunDirectoryError(
            f"checkpoint step {chosen} is not in {str(run_dir)!r}; steps: {ckpt.manager.all_steps()}"
        )
    if not allow_other_base:
        recorded = read_meta(run_dir, chosen).get(FINGERPRINT)
        check_base(run_dir, chosen, recorded, base_fingerprint(cfg))
    if mesh is None:
        mesh = _inference_mesh(cfg)
    model = build_run_model(cfg, mesh=mesh)
    graphdef, trainable, rest = nnx.split(model, trainable_filter(cfg.lora.enabled), ...)
    trainable = ckpt.restore_trainable(chosen, trainable)
    model = nnx.merge(graphdef, trainable, rest)
    return cfg, model, load_run_tokenizer(run_dir, cfg)


def load_for_eval(
    run_dir_or_step: str | Path,
    *,
    adapters: bool,
    step: str | int = "best",
    mesh=None,
    allow_other_base: bool = False,
):
    """(run_config, model, tokenizer, run_dir, step, use_adapters) for evaluation.

    For a full fine-tune with adapters off the model is the run's base, rebuilt from its config
    (the same seeded base, before any step). `mesh`: where to place the weights (None: the run's
    mesh, see restore_for_inference); `allow_other_base`: see restore_for_inference.
    """
    run_dir, chosen = locate_checkpoint(run_dir_or_step, step)
    run_cfg, model, tokenizer = restore_for_inference(
        run_dir, mesh, step=chosen, allow_other_base=allow_other_base
    )
    use_adapters = adapters
    if not adapters and not run_cfg.lora.enabled:
        model = build_run_model(run_cfg, mesh=mesh)
        use_adapters = True
    return run_cfg, model, tokenizer, run_dir, chosen, use_adapters
