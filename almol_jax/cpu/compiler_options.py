"""Per-program XLA:CPU compiler options: what each of our jitted programs runs faster with.

They are XLA debug options passed as `jax.jit(..., compiler_options=...)`, so they apply to that
program only (XLA_FLAGS would apply to every program of the process, and a user's XLA_FLAGS stay
untouched). They are experimental flags: a jaxlib that does not know one rejects it, and then
the program compiles without (probed once per option set). Only the CPU backend gets them.

Programs by name (`PROGRAMS`; cpu/runtime.compiler_options is the door):

- "train_step" (train/step.py's train and eval steps, the bench's step): none. XLA's loop
  emitters (`xla_cpu_use_fusion_emitters: false`) were used from issue 8 (cpo-small 0.163 ->
  0.155 s/step then), but they made the LoRA step's compile 4.4x slower (almol-mini shape: 41
  vs 9.4 s; cpo-small 17 vs 9.3 s) for no step-time gain measured on 2026-12-05 (1.05-1.08x
  slower, under load): `python bench/compile_options.py` (docs/benchmarks.md).
- "decode" (generation/decode.py): YNNPACK fusions off. The decode loop's one-row-per-prompt
  products and small reductions ran ~7-10% faster through XLA's own kernels, whereas the
  training step's large products are faster with YNNPACK.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

PROGRAMS = {
    "train_step": {},
    "decode": {"xla_cpu_experimental_ynn_fusion_type": ""},
}


@functools.cache
def _supported(items: tuple) -> bool:
    try:
        probe = jax.jit(lambda x: x + 1, compiler_options=dict(items))
        probe.lower(jnp.zeros((), jnp.int32)).compile()
    except Exception:  # noqa: BLE001 - any rejection of the options means "unsupported"
        return False
    return True


def supported(options: dict) -> bool:
    """Whether this jaxlib's compiler accepts `options` (compiles a probe once per set)."""
    return _supported(tuple(sorted(options.items())))


def for_program(program: str, platform: str | None = None) -> dict | None:
    """The options of `program` (a PROGRAMS name) when the program is compiled for the CPU
    (`platform`: the platform of the devices it is compiled for, e.g. its mesh's; None: this
    process's default backend) and this jaxlib accepts them, else None (no options): a TPU or
    GPU program compiled ahead of time on a CPU host never gets XLA:CPU options.

    Call it when the program is built (it initialises the backend), not at import time."""
    if program not in PROGRAMS:
        raise ValueError(f"program={program!r} not in {sorted(PROGRAMS)}")
    options = PROGRAMS[program]
    if not options:
        return None
    platform = jax.default_backend() if platform is None else platform
    if platform == "cpu" and supported(options):
        return dict(options)
    return None
