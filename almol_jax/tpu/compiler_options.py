"""Per-program XLA:TPU compiler options, passed as `jax.jit(..., compiler_options=...)`.

- "train_step" (train/step.py's train and eval steps): no windowed einsum (collective matmul)
  for FSDP all-gathers (`xla_tpu_enable_windowed_einsum_for_all_gather=false`). With it, libtpu
  turns each layer's weight all-gather + matmul into a collective-permute loop whose
  [rows, T, mlp] output buffer is allocated when the loop is scheduled, far ahead of its use:
  about 20 such bf16 [16, 768, 11008] buffers (258 MiB each) were live at the peak of the
  Meditron-7B step at 16 pairs per v5e chip. Without it the weights are all-gathered per layer
  and multiplied locally (docs/benchmarks.md, issue 16, has the compiled figures).

Only programs compiled for TPU devices get them (the platform of the program's mesh).
"""

from __future__ import annotations

PROGRAMS = {
    "train_step": {"xla_tpu_enable_windowed_einsum_for_all_gather": False},
}


def for_program(program: str, platform: str) -> dict | None:
    """The options of `program` when compiled for `platform` "tpu", else None."""
    if program not in PROGRAMS:
        raise ValueError(f"program={program!r} not in {sorted(PROGRAMS)}")
    return dict(PROGRAMS[program]) if platform == "tpu" else None
