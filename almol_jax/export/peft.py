"""PEFT export: the LoRA adapters as a PEFT LoRA directory for the original base model.

Writes `adapter_config.json` (peft_type LORA, task_type CAUSAL_LM, r, lora_alpha, explicit
target_modules, use_rslora, base_model_name_or_path) and `adapter_model.safetensors` with PEFT's
key names (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` [R, in],
`...lora_B.weight` [out, R]), so `PeftModel.from_pretrained(base, dir)` reproduces our logits.
Reading such a directory back (adapters in) is `almol_jax.model.hf_weights.load_peft_adapter`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flax import nnx

from almol_jax.errors import ConfigError
from almol_jax.export.merged import save_tokenizer, write_json
from almol_jax.export.streaming import numpy_dtype, write_sharded_safetensors
from almol_jax.export.tensors import adapted_module_names, adapter_tensor_specs, is_writer

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"


def adapter_config_dict(
    lora_config: Any, target_modules: list[str], base_model_name_or_path: str | None
) -> dict:
    """adapter_config.json for our LoraConfig (fields every PEFT >= 0.9 reads)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": int(lora_config.r),
        "lora_alpha": float(lora_config.alpha),
        "lora_dropout": float(lora_config.dropout),
        "target_modules": list(target_modules),
        "use_rslora": bool(lora_config.use_rslora),
        "rank_pattern": {},
        "alpha_pattern": {},
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "use_dora": False,
    }


def export_peft(
    model: nnx.Module,
    out_dir: str | os.PathLike,
    *,
    base_model_name_or_path: str | None,
    tokenizer: Any = None,
    dtype: str = "float32",
) -> Path:
    """Writes the adapters of `model` as a PEFT LoRA adapter directory (one safetensors file)."""
    lora_config = getattr(model, "lora_config", None)
    if lora_config is None:
        raise ConfigError("format='peft' needs a LoRA model; this model has lora_config=None")
    np_dtype = numpy_dtype(dtype)
    out_dir = Path(out_dir)
    if is_writer():
        out_dir.mkdir(parents=True, exist_ok=True)
    specs = adapter_tensor_specs(model, np_dtype)
    # PEFT reads one file only: never shard the adapters.
    write_sharded_safetensors(
        out_dir,
        specs,
        max_shard_size=max(sum(s.nbytes for s in specs), 1),
        weights_name=ADAPTER_WEIGHTS_NAME,
        write_index=False,
        is_writer=is_writer(),
    )
    config = adapter_config_dict(lora_config, adapted_module_names(model), base_model_name_or_path)
    write_json(out_dir / "adapter_config.json", config)
    save_tokenizer(tokenizer, out_dir)
    return out_dir
