"""Export entry points: an in-memory model (`export_model`) or a trained run (`export_run`).

`export_run` restores a run directory or one of its `checkpoints/<step>` folders with
`restore_for_inference` (base from its source + the checkpoint's trainables) and writes it in
the merged or PEFT format. The training loop calls it when `export.at_end` is set
(`export_from_config`). On multi-host runs every process must call it (the gathers are
collectives); only process 0 writes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from flax import nnx

from almol_jax.export.merged import export_merged
from almol_jax.export.peft import export_peft

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
) -> Path:
    """Exports an in-memory model.

    merged: a transformers directory with LoRA folded in. peft: an adapter directory for
    `base_model_name_or_path`; when that is None (a randomly initialised base, e.g. the demo
    runs), the base itself is exported to `<out_dir>/base` (merged format, adapters off) and
    its absolute path is recorded, so `PeftModel.from_pretrained` finds it.
    """
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not one of {FORMATS}")
    out_dir = Path(out_dir)
    if format == "merged":
        return export_merged(
            model,
            out_dir,
            tokenizer=tokenizer,
            dtype=dtype,
            max_shard_size=max_shard_size,
            max_new_tokens=max_new_tokens,
        )
    if base_model_name_or_path is None:
        base_dir = export_merged(
            model,
            out_dir / BASE_SUBDIR,
            tokenizer=tokenizer,
            dtype=dtype,
            max_shard_size=max_shard_size,
            max_new_tokens=max_new_tokens,
            merge_adapters=False,
        )
        base_model_name_or_path = str(base_dir.absolute())
    return export_peft(
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
) -> Path:
    """Exports a trained run (its best checkpoint by default, or `step`, or a step folder)."""
    from almol_jax.run.restore import restore_for_inference

    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not one of {FORMATS}")
    cfg, model, tokenizer = restore_for_inference(run_dir_or_step, mesh=mesh, step=step)
    return export_model(
        model,
        out_dir,
        format=format,
        tokenizer=tokenizer,
        dtype=dtype,
        max_shard_size=max_shard_size,
        base_model_name_or_path=cfg.model.source,
        max_new_tokens=cfg.generation.max_new_tokens,
    )


def export_dir_of(cfg: Any) -> Path:
    """Where `export.at_end` writes: export.dir, or <output_dir>/export."""
    return Path(cfg.export.dir) if cfg.export.dir is not None else Path(cfg.output_dir) / "export"


def export_from_config(cfg: Any, model: nnx.Module, tokenizer: Any) -> Path:
    """The end-of-training export of a run, as its `export:` section says (in-memory model)."""
    ex = cfg.export
    return export_model(
        model,
        export_dir_of(cfg),
        format=ex.format,
        tokenizer=tokenizer,
        dtype=ex.dtype,
        max_shard_size=ex.max_shard_size,
        base_model_name_or_path=cfg.model.source,
        max_new_tokens=cfg.generation.max_new_tokens,
    )
