"""Tokenizers: a Hugging Face one (local dir or hub id), a SentencePiece .model, or the byte-level one.

``load_tokenizer(cfg.tokenizer)`` always returns a transformers tokenizer (so it can be saved into
the run directory with ``save_pretrained`` and read back with ``AutoTokenizer``). None of them add
BOS/EOS by themselves in the data pipeline: tokenize.py calls them with
``add_special_tokens=False`` and adds BOS and EOS explicitly.

The byte-level tokenizer (kind "byte") needs no files: ids 0..3 are ``<unk> <s> </s> <pad>``
(BOS 1 and EOS 2 as in LLaMA), ids 4..259 are the 256 bytes, so any text encodes losslessly,
one token per UTF-8 byte (vocab 260).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from almol_jax.errors import ConfigError
from almol_jax.hub import resolve_dir

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
BYTE_OFFSET = len(SPECIAL_TOKENS)
BYTE_VOCAB_SIZE = BYTE_OFFSET + 256
# the files of an hf tokenizer: what a Hub download fetches and what a run's fingerprint hashes
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
)
TOKENIZER_PATTERNS = (*TOKENIZER_FILES, "config.json")


def byte_tokenizer() -> Any:
    """The byte-level tokenizer as a ``PreTrainedTokenizerFast`` (vocab 260, BOS 1, EOS 2, pad 3)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    alphabet = ByteLevel.alphabet()  # the 256 printable stand-ins GPT-2 uses for bytes
    byte_to_char = _bytes_to_unicode()
    assert sorted(alphabet) == sorted(byte_to_char.values())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for b in range(256):
        vocab[byte_to_char[b]] = BYTE_OFFSET + b
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 30,
        padding_side="right",
        split_special_tokens=True,  # the text "<s>" is 3 bytes, not BOS
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (what ByteLevel pre-tokenises to)."""
    keep = list(range(ord("!"), ord("~") + 1))
    keep += list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(keep, chars, strict=True)}


LLAMA_SPECIAL_TOKENS = {
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
}


def write_llama_tokenizer_config(out: Path, **extra: Any) -> None:
    """``tokenizer_config.json`` (+ ``special_tokens_map.json``) beside a SentencePiece
    ``tokenizer.model`` in ``out``, so ``AutoTokenizer.from_pretrained(out)`` gives a
    LlamaTokenizer that adds no BOS/EOS by itself; ``extra`` adds config keys."""
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": False,
        "add_eos_token": False,
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        **extra,
        **LLAMA_SPECIAL_TOKENS,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")
    (out / "special_tokens_map.json").write_text(
        json.dumps(LLAMA_SPECIAL_TOKENS, indent=2) + "\n", "utf-8"
    )


def _sentencepiece_tokenizer(model_file: Path) -> Any:
    """A LLaMA tokenizer around a SentencePiece ``.model`` (specials <unk>,<s>,</s>,<pad>)."""
    from transformers import AutoTokenizer

    # transformers 5 ignores LlamaTokenizer(vocab_file=...); loading a dir is the reliable route.
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(model_file, Path(tmp) / "tokenizer.model")
        write_llama_tokenizer_config(Path(tmp))
        return AutoTokenizer.from_pretrained(tmp, trust_remote_code=False)


def tokenizer_dir(path: str) -> Path:
    """The local directory of an hf tokenizer.path (a Hub id is fetched: tokenizer files only)."""
    return resolve_dir(path, "tokenizer.path", TOKENIZER_PATTERNS)


def _hf_tokenizer(directory: Path) -> Any:
    """AutoTokenizer of a local directory, never running remote code."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise ConfigError(f"tokenizer.path={str(directory)!r} could not be loaded: {err}") from err


def load_tokenizer(cfg: Any) -> Any:
    """The tokenizer for a TokenizerSection (kind, path). Sets a pad token when it has none.

    A bad kind or path is a ConfigError (a user's mistake, and a ValueError); where an hf path
    points (a local directory, or an `owner/name` Hub id when not offline) is almol_jax/hub.py's
    rule. Remote code is never run (trust_remote_code=False)."""
    kind, path = cfg.kind, cfg.path
    if kind == "byte":
        if path is not None:
            raise ConfigError(f"tokenizer.kind='byte' takes no path, got tokenizer.path={path!r}")
        tok = byte_tokenizer()
    elif kind == "sentencepiece":
        model_file = Path(str(path)).expanduser()
        if model_file.is_dir():
            model_file = model_file / "tokenizer.model"
        if not model_file.is_file():
            raise ConfigError(
                f"tokenizer.path={path!r}: no SentencePiece model at {str(model_file)!r}"
            )
        tok = _sentencepiece_tokenizer(model_file)
    elif kind == "hf":
        if path is None:
            raise ConfigError("tokenizer.kind='hf' needs tokenizer.path (a local dir or a hub id)")
        tok = _hf_tokenizer(tokenizer_dir(path))
    else:
        raise ConfigError(f"tokenizer.kind={kind!r} is not one of 'hf', 'byte', 'sentencepiece'")
    for name in ("bos_token_id", "eos_token_id"):
        if getattr(tok, name) is None:
            raise ConfigError(
                f"tokenizer {path or kind!r} has no {name[:-3]}; ALMol needs BOS and EOS"
            )
    if tok.pad_token_id is None:
        # LLaMA tokenizers have no pad token; padding positions are masked, any id works.
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    return tok


def check_vocab_fits(tokenizer: Any, vocab_size: int, where: str) -> None:
    """ConfigError naming both sizes when the tokenizer's ids (added tokens included) reach past
    the model's ``vocab_size`` rows (``where`` names the model, e.g. its source)."""
    size = len(tokenizer)
    if size > vocab_size:
        raise ConfigError(
            f"the tokenizer has {size} tokens (ids up to {size - 1}) but the model {where} has a "
            f"vocabulary of {vocab_size}: use the model's own tokenizer (tokenizer.path: null) "
            "or a model whose vocab_size covers it"
        )
