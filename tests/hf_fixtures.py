"""Helpers for the model tests: tiny random transformers LLaMA checkpoints written to tmp dirs."""

from __future__ import annotations

import functools

import numpy as np


def make_hf_llama(tmp_path, seed=0, **config_kwargs):
    """Saves a random fp32 transformers LlamaForCausalLM (safetensors) and returns (model, dir)."""
    import torch
    import transformers

    base = dict(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    base.update(config_kwargs)
    config = transformers.LlamaConfig(**base)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).float().eval()
    with torch.no_grad():  # random norms and biases too, so every tensor matters
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    out = tmp_path / "hf"
    model.save_pretrained(out, safe_serialization=True)
    return model, out


def padded_batch(vocab_size, seed=0):
    """ids/mask int32 [4, 12]: a full row, a right-padded row and two left-padded rows."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab_size, size=(4, 12)).astype(np.int32)
    mask = np.ones((4, 12), np.int32)
    mask[1, 8:] = 0
    mask[2, :5] = 0
    mask[3, :2] = 0
    ids[mask == 0] = 0
    return ids, mask


def hf_logits(model, ids, mask):
    """HF logits with positions = cumsum(mask) - 1 (what generate() uses for padded rows)."""
    import torch

    pos = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            position_ids=torch.tensor(pos, dtype=torch.long),
        )
    return out.logits.float().numpy()


def forward(model, ids, mask=None, **kwargs):
    """Jitted model(ids, mask, **kwargs) as numpy (eager op-by-op dispatch is slow on CPU)."""
    import jax

    return jax.tree.map(np.asarray, _jitted_forward()(model, ids, mask, **kwargs))


@functools.cache
def _jitted_forward():
    from flax import nnx

    return nnx.jit(lambda model, ids, mask, **kwargs: model(ids, mask, **kwargs))


def left_padded_prompts(lengths, vocab, seed=0, low=3):
    """Left-padded random prompts (BOS 1 first, tokens in [low, vocab)): ids, mask int32
    [B, max(lengths)]."""
    rng = np.random.default_rng(seed)
    width = max(lengths)
    ids = np.zeros((len(lengths), width), np.int32)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, width - n :] = rng.integers(low, vocab, n)
        ids[i, width - n] = 1
        mask[i, width - n :] = 1
    return ids, mask


def hf_generate(model, ids, mask, eos, **kwargs):
    """transformers' `generate` on left-padded prompts (pad 0, this EOS): its raw output."""
    import torch

    model.generation_config.eos_token_id = eos
    with torch.inference_mode():
        return model.generate(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            pad_token_id=0,
            **kwargs,
        )
