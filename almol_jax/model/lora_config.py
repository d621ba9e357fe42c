"""LoraConfig: which projections get low-rank adapters, their rank, scale, dropout and dtype.

One definition serves the model and the run config: ``build_model(..., lora=LoraConfig(...))``
takes it, and the run config's ``lora`` section (config/sections.py, ``LoraSection``) is this
class plus the ``enabled`` switch, so every field, default and document is written once here.
Each field carries its one-line documentation (almol_jax/doc_field.py; docs/configuration.md is
generated from it). The defaults are the published ALMol
recipe's (PEFT conventions: r 64, alpha 16, all linear block projections).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from almol_jax.doc_field import doc_field
from almol_jax.model.config import dtype_of

LORA_INITS = ("b_zero", "a_zero")
PEFT_LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters on the block projections (PEFT semantics); the base stays frozen."""

    r: int = doc_field(64, "Adapter rank.")
    alpha: float = doc_field(
        16.0, "Adapter scale numerator: scale = alpha / r (alpha / sqrt(r) rsLoRA)."
    )
    dropout: float = doc_field(0.0, "Dropout on the adapter input during training.")
    target_modules: str | tuple[str, ...] = doc_field(
        "all-linear", '"all-linear" (q,k,v,o,gate,up,down; not lm_head) or PEFT module names.'
    )
    use_rslora: bool = doc_field(False, "Rank-stabilised scale alpha / sqrt(r).")
    param_dtype: str = doc_field(
        "float32", "Storage dtype of the adapters (independent of the base)."
    )
    init: Literal[LORA_INITS] = doc_field(
        "b_zero",
        "b_zero: PEFT's (A kaiming-uniform, B = 0); a_zero: A = 0, B uniform(+-1/sqrt(r)) "
        "(the adapter product is 0 at step 0 either way).",
    )

    def __post_init__(self):
        tm = self.target_modules
        if isinstance(tm, str) and tm != "all-linear":
            tm = (tm,)
        if not isinstance(tm, str):
            tm = tuple(tm)
            bad = [m for m in tm if m not in PEFT_LINEAR_NAMES]
            if bad:
                raise ValueError(
                    f"target_modules has unknown names {bad}; expected {PEFT_LINEAR_NAMES} "
                    "or 'all-linear' (lm_head is never adapted)"
                )
        object.__setattr__(self, "target_modules", tm)
        if self.r < 1:
            raise ValueError(f"LoRA rank r={self.r} must be >= 1")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha={self.alpha} must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout={self.dropout} must be in [0, 1)")
        dtype_of(self.param_dtype)
        if self.init not in LORA_INITS:
            raise ValueError(f"LoRA init={self.init!r} is not one of {LORA_INITS}")

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def targets(self, module_name: str) -> bool:
        """Whether the projection called `module_name` (a PEFT name) gets an adapter."""
        if self.target_modules == "all-linear":
            return module_name in PEFT_LINEAR_NAMES
        return module_name in self.target_modules
