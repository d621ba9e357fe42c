"""A llama-architecture GGUF file as Hugging Face tensors and config (numpy only, via ``gguf``).

Every tensor is dequantised to fp32 (``gguf.quants.dequantize``; the arrays come out in Hugging
Face's ``[out, in]`` layout) and renamed (``blk.N.attn_q.weight`` ->
``model.layers.N.self_attn.q_proj.weight``, ...). llama.cpp's converter permutes the rows of the q
and k projections for its RoPE convention (per head, the two rotary halves interleaved);
:func:`unpermute` is the inverse (transformers' GGUF loader does the same), without which a
forward pass gives garbage. A file without ``output.weight`` has tied embeddings.
:func:`hf_config` is the transformers-5 LlamaConfig (``rope_parameters`` layout) the metadata
describes (written here, not through almol_jax.model, so that almol_jax/hub.py can reach this
package without an import circle).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}


def field(reader: Any, key: str, default: Any = None) -> Any:
    """A metadata value of the GGUF file (``default`` when absent)."""
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def hf_name(gguf_name: str) -> str:
    """The Hugging Face name of a GGUF tensor name (ValueError for an unknown one)."""
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _TOP_NAMES:
        return f"{_TOP_NAMES[parts[0]]}.{parts[1]}"
    raise ValueError(f"GGUF tensor {gguf_name!r} has no Hugging Face LLaMA name")


def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's ``permute(w, n_heads)`` of q/k rows: [N*(H/2)*2, D] -> HF's row order."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_config(reader: Any) -> dict[str, Any]:
    """The config.json (LlamaForCausalLM, fp32) a llama GGUF file's metadata describes."""
    arch = field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture {arch!r} is not llama")
    heads = int(field(reader, "llama.attention.head_count"))
    hidden = int(field(reader, "llama.embedding_length"))
    names = {t.name for t in reader.tensors}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": len(field(reader, "tokenizer.ggml.tokens")),
        "hidden_size": hidden,
        "intermediate_size": int(field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(field(reader, "llama.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(field(reader, "llama.attention.head_count_kv", heads)),
        "head_dim": int(field(reader, "llama.rope.dimension_count", hidden // heads)),
        "hidden_act": "silu",
        "rms_norm_eps": float(np.float32(field(reader, "llama.attention.layer_norm_rms_epsilon"))),
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": float(field(reader, "llama.rope.freq_base", 10000.0)),
        },
        "max_position_embeddings": int(field(reader, "llama.context_length")),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": field(reader, "tokenizer.ggml.padding_token_id"),
        "dtype": "float32",
    }


def hf_tensors(reader: Any, cfg: dict[str, Any]) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, fp32 array) of every tensor, dequantised and with q/k rows unpermuted."""
    from gguf.quants import dequantize

    for t in reader.tensors:
        name = hf_name(t.name)
        w = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        if name.endswith("q_proj.weight"):
            w = unpermute(w, cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            w = unpermute(w, cfg["num_key_value_heads"])
        yield name, w
