"""Adapters in: a model from a PEFT LoRA adapter directory (ours, or trained with TRL/PEFT).

`load_with_adapter(adapter_dir)` reads adapter_config.json, loads its base model
(`base_model_name_or_path`, or the `base` argument) with a LoraConfig of the same rank, scale and
targets, and copies the adapter tensors in, ready to evaluate or to continue training. The
tensor-level work is `almol_jax.model.hf_weights.load_peft_adapter` (the model's name mapping),
which refuses (`check_adapter_config`) adapters using PEFT features we cannot honour.
"""

from __future__ import annotations

import os
from typing import Any

from almol_jax.model.hf_weights import check_adapter_config, load_peft_adapter, read_peft_config


def load_with_adapter(
    adapter_dir: str | os.PathLike, *, base: str | None = None, **load_model_kwargs: Any
):
    """The base model of a PEFT adapter with the adapter loaded (LlamaForCausalLM).

    `base` overrides the adapter's `base_model_name_or_path` (a local dir or hub id);
    other keyword arguments go to `load_model` (dtype, param_dtype, mesh, rules, ...).
    """
    from almol_jax.model.build import load_model

    config = check_adapter_config(adapter_dir)
    base = base or config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{str(adapter_dir)!r} names no base_model_name_or_path; pass base=")
    model = load_model(base, lora=read_peft_config(adapter_dir), **load_model_kwargs)
    return load_peft_adapter(model, adapter_dir)
