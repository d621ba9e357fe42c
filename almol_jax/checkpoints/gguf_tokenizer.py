"""A GGUF file's byte-level BPE tokenizer as ``tokenizer.json`` + ``tokenizer_config.json``.

Built with ``tokenizers`` from the file's own vocabulary (``tokenizer.ggml.tokens``, already in
GPT-2's byte alphabet), merges, control tokens (token type 3: added as special tokens, kept whole),
BOS / EOS / UNK / PAD ids and chat template. The pre-tokenizer follows llama.cpp's
``tokenizer.ggml.pre``: ``smollm`` splits every digit on its own before GPT-2's byte-level regex
(what SmolLM2's tokenizer does); ``gpt2`` is GPT-2's regex alone. Neither adds BOS by itself
(``tokenizer.ggml.add_bos_token``); almol_jax's data pipeline adds it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from almol_jax.checkpoints.gguf_weights import field

_CONTROL = 3  # llama.cpp's token type of control tokens (<|im_start|>, ...)


def _pre_tokenizer(pre: str) -> Any:
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in ("gpt2", "default"):
        return byte_level
    raise ValueError(f"GGUF tokenizer.ggml.pre={pre!r} is not supported (smollm, gpt2)")


def build_tokenizer(reader: Any) -> Any:
    """The ``tokenizers.Tokenizer`` of a GGUF file with a ``gpt2`` (byte-level BPE) vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    kind = field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"GGUF tokenizer.ggml.model={kind!r} is not gpt2 (byte-level BPE)")
    tokens = list(field(reader, "tokenizer.ggml.tokens"))
    types = list(field(reader, "tokenizer.ggml.token_type"))
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges")]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(field(reader, "tokenizer.ggml.pre", "gpt2"))
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    control = [t for t, ty in zip(tokens, types, strict=True) if ty == _CONTROL]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    return tok


def special_tokens(reader: Any) -> dict[str, str]:
    """{"bos_token": ..., "eos_token": ..., "unk_token": ..., "pad_token": ...} by the file's ids."""
    tokens = field(reader, "tokenizer.ggml.tokens")
    out = {}
    for name, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        i = field(reader, f"tokenizer.ggml.{key}_token_id")
        if i is not None:
            out[f"{name}_token"] = tokens[int(i)]
    return out


def write_tokenizer(reader: Any, out_dir: Path, max_length: int) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json into ``out_dir``."""
    tok = build_tokenizer(reader)
    tok.save(str(out_dir / "tokenizer.json"))
    specials = special_tokens(reader)
    types = field(reader, "tokenizer.ggml.token_type")
    control = [
        t
        for t, ty in zip(field(reader, "tokenizer.ggml.tokens"), types, strict=True)
        if ty == _CONTROL
    ]
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "add_bos_token": bool(field(reader, "tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        "extra_special_tokens": [t for t in control if t not in specials.values()],
        **specials,
    }
    template = field(reader, "tokenizer.chat_template")
    if template is not None:
        config["chat_template"] = template
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", "utf-8")
