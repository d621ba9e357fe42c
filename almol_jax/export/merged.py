"""Merged export: LoRA folded into the base weights, a plain transformers LLaMA directory.

Writes `config.json` (the base LlamaConfig, true vocabulary size, the export dtype),
`generation_config.json`, the weights as safetensors shards (`model.safetensors` or
`model-0000i-of-0000n.safetensors`) with `model.safetensors.index.json`, and the run's tokenizer,
so `AutoModelForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)` work.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flax import nnx

from almol_jax.export.streaming import numpy_dtype, write_sharded_safetensors
from almol_jax.export.tensors import is_writer, model_tensor_specs


def hf_config_dict(model_config: Any, dtype: str) -> dict:
    """config.json of the export: ModelConfig.to_hf_config() plus the stored dtype.

    `rope_theta` and `torch_dtype` are repeated at the top level for transformers 4.x readers
    (5.x reads `rope_parameters` and `dtype`).
    """
    config = dict(model_config.to_hf_config())
    config["dtype"] = dtype
    config["torch_dtype"] = dtype
    config.setdefault("rope_theta", model_config.rope_theta)
    return config


def generation_config_dict(
    model_config: Any, *, max_new_tokens: int | None = None, tokenizer: Any = None
) -> dict:
    """generation_config.json: special ids and greedy decoding (the paper's setting).

    The pad id is the model config's, else the tokenizer's (LLaMA configs often have none).
    """
    pad_token_id = model_config.pad_token_id
    if pad_token_id is None and tokenizer is not None:
        pad_token_id = getattr(tokenizer, "pad_token_id", None)
    config: dict[str, Any] = {
        "bos_token_id": model_config.bos_token_id,
        "eos_token_id": model_config.eos_token_id,
        "pad_token_id": pad_token_id,
        "do_sample": False,
    }
    if max_new_tokens is not None:
        config["max_new_tokens"] = int(max_new_tokens)
    return {k: v for k, v in config.items() if v is not None}


def write_json(path: Path, doc: dict) -> None:
    """Writes a JSON document (only on the writing process)."""
    if is_writer():
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_tokenizer(tokenizer: Any, out_dir: Path) -> list[str]:
    """Saves a transformers tokenizer with save_pretrained; returns the files written."""
    if tokenizer is None or not is_writer():
        return []
    if not hasattr(tokenizer, "save_pretrained"):
        raise ValueError(
            f"tokenizer of type {type(tokenizer).__name__} has no save_pretrained; "
            "export needs a transformers tokenizer"
        )
    return [str(f) for f in tokenizer.save_pretrained(str(out_dir))]


def export_merged(
    model: nnx.Module,
    out_dir: str | os.PathLike,
    *,
    tokenizer: Any = None,
    dtype: str = "bfloat16",
    max_shard_size: int | str = "5GB",
    max_new_tokens: int | None = None,
    merge_adapters: bool = True,
) -> Path:
    """Writes `model` as a transformers LlamaForCausalLM directory.

    With `merge_adapters` (default) LoRA is folded in (W + scale * A @ B); without, the frozen
    base alone is written (what a PEFT export's adapters apply to).
    """
    np_dtype = numpy_dtype(dtype)
    out_dir = Path(out_dir)
    if is_writer():
        out_dir.mkdir(parents=True, exist_ok=True)
    specs = model_tensor_specs(model, np_dtype, merge_lora=merge_adapters)
    write_sharded_safetensors(
        out_dir, specs, max_shard_size=max_shard_size, write_index=True, is_writer=is_writer()
    )
    write_json(out_dir / "config.json", hf_config_dict(model.config, dtype))
    write_json(
        out_dir / "generation_config.json",
        generation_config_dict(model.config, max_new_tokens=max_new_tokens, tokenizer=tokenizer),
    )
    save_tokenizer(tokenizer, out_dir)
    return out_dir
