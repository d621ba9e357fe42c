"""almol_jax.model: LLaMA-family causal LM in Flax NNX, LoRA, KV cache and HF weight loading."""

from almol_jax.model.build import build_model, load_model
from almol_jax.model.config import ModelConfig
from almol_jax.model.kv_cache import KVCache, init_cache
from almol_jax.model.llama import LlamaForCausalLM
from almol_jax.model.lora import (
    LoRAParam,
    disable_adapters,
    lora_state,
    merge_lora,
    without_adapters,
    zeros_like_lora,
)
from almol_jax.model.lora_config import LoraConfig

__all__ = [
    "KVCache",
    "LlamaForCausalLM",
    "LoRAParam",
    "LoraConfig",
    "ModelConfig",
    "build_model",
    "disable_adapters",
    "init_cache",
    "load_model",
    "lora_state",
    "merge_lora",
    "without_adapters",
    "zeros_like_lora",
]
