"""Export entry points: an in-memory model (`export_model`) or a trained run (`export_run`).

`export_run` restores a run directory or one of its `checkpoints/<step>` folders with
`restore_for_inference` (base from its source + the checkpoint's trainables) and writes it in
the merged or PEFT format. Both write through `atomic.atomic_directory`: the export appears whole
or not at all, and a non-empty target is refused unless `overwrite` (which replaces it whole).
The export after training (`export.at_end`, after_training.py) replaces the run's own previous
export (`atomic.holds_export`). On multi-host runs every process must call it (the gathers are
collectives); only process 0 writes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from flax import nnx

from almol_jax.export.atomic import (
    atomic_directory,
    check_target,
    holds_export,
    write_provenance,
)
from almol_jax.export.merged import export_merged
from almol_jax.export.peft import export_peft
from almol_jax.export.tensors import is_writer
from almol_jax.hub import peft_base_name

FORMATS = ("merged", "peft")
BASE_SUBDIR = "base"


def export_model(
    model: nnx.Module,
    out_dir: str | os.PathLike,
    *,
    format: Literal["merged", "peft"] = "merged",
    tokenizer: Any = None,
    dtype: str = "bfloat16",
    max_shard_size: int | str = "5GB",
    base_model_name_or_path: str | None = None,
    max_new_tokens: int | None = None,
    overwrite: bool = False,
    run_dir: str | os.PathLike | None = None,
) -> Path:
    """Exports an in-memory model to `out_dir` (atomically; a non-empty `out_dir` is refused
    unless `overwrite`, which replaces it whole).

    merged: a transformers directory with LoRA folded in. peft: an adapter directory for
    `base_model_name_or_path`; when that is None (a randomly initialised base, e.g. the demo
    runs), the base itself is exported to `<out_dir>/base` (merged format, adapters off) and
    its absolute path is recorded, so `PeftModel.from_pretrained` finds it. `run_dir`: the run
    the model was trained in, recorded in `almol_jax_export.json`.
    """
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not one of {FORMATS}")
    final = Path(out_dir).absolute()
    with atomic_directory(final, overwrite=overwrite) as tmp:
        _write_export(
            model,
            tmp,
            final,
            format=format,
            tokenizer=tokenizer,
            dtype=dtype,
            max_shard_size=max_shard_size,
            base_model_name_or_path=base_model_name_or_path,
            max_new_tokens=max_new_tokens,
        )
        if run_dir is not None and is_writer():
            write_provenance(tmp, run_dir)
    return final


def _write_export(
    model: nnx.Module,
    out_dir: Path,
    final: Path,
    *,
    format: str,
    tokenizer: Any,
    dtype: str,
    max_shard_size: int | str,
    base_model_name_or_path: str | None,
    max_new_tokens: int | None,
) -> None:
    """Writes the export into `out_dir` (the temporary folder that becomes `final`)."""
    if format == "merged":
        export_merged(
            model,
            out_dir,
            tokenizer=tokenizer,
            dtype=dtype,
            max_shard_size=max_shard_size,
            max_new_tokens=max_new_tokens,
        )
        return
    if base_model_name_or_path is None:
        export_merged(
            model,
            out_dir / BASE_SUBDIR,
            tokenizer=tokenizer,
            dtype=dtype,
            max_shard_size=max_shard_size,
            max_new_tokens=max_new_tokens,
            merge_adapters=False,
        )
        base_model_name_or_path = str(final / BASE_SUBDIR)  # where it will be after the rename
    export_peft(
        model,
        out_dir,
        base_model_name_or_path=base_model_name_or_path,
        tokenizer=tokenizer,
        dtype=dtype,
    )


def export_run(
    run_dir_or_step: str | os.PathLike,
    out_dir: str | os.PathLike,
    format: Literal["merged", "peft"] = "merged",
    dtype: str = "bfloat16",
    max_shard_size: int | str = "5GB",
    *,
    step: str | int = "best",
    mesh=None,
    overwrite: bool = False,
    allow_other_base: bool = False,
) -> Path:
    """Exports a trained run (its best checkpoint by default, or `step`, or a step folder) to
    `out_dir`; a non-empty `out_dir` is refused (before anything is restored) unless
    `overwrite`, which replaces it whole. Adapters trained on another base than the run's
    config now names are refused unless `allow_other_base` (run/restore.py)."""
    from almol_jax.run.locate import run_and_step
    from almol_jax.run.restore import restore_for_inference

    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not one of {FORMATS}")
    check_target(out_dir, overwrite=overwrite)
    run_dir = run_and_step(run_dir_or_step)[0]
    cfg, model, tokenizer = restore_for_inference(
        run_dir_or_step, mesh=mesh, step=step, allow_other_base=allow_other_base
    )
    return export_model(
        model,
        out_dir,
        format=format,
        tokenizer=tokenizer,
        dtype=dtype,
        max_shard_size=max_shard_size,
        base_model_name_or_path=peft_base_name(cfg.model.source),
        max_new_tokens=cfg.generation.max_new_tokens,
        overwrite=overwrite,
        run_dir=run_dir,
    )


def export_dir_of(cfg: Any) -> Path:
    """Where `export.at_end` writes: export.dir, or <output_dir>/export."""
    return Path(cfg.export.dir) if cfg.export.dir is not None else Path(cfg.output_dir) / "export"


def export_from_config(cfg: Any, model: nnx.Module, tokenizer: Any) -> Path:
    """The end-of-training export of a run, as its `export:` section says (in-memory model);
    it replaces the run's own earlier export (`holds_export`), never another folder."""
    ex = cfg.export
    target = export_dir_of(cfg)
    return export_model(
        model,
        target,
        format=ex.format,
        tokenizer=tokenizer,
        dtype=ex.dtype,
        max_shard_size=ex.max_shard_size,
        base_model_name_or_path=peft_base_name(cfg.model.source),
        max_new_tokens=cfg.generation.max_new_tokens,
        overwrite=holds_export(target, cfg.output_dir),
        run_dir=cfg.output_dir,
    )
