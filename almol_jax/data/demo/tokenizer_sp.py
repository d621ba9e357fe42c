"""A small SentencePiece BPE tokenizer for the demo, saved so transformers' Llama tokenizers load it.

LLaMA-style: BPE with byte fallback (any UTF-8 text round-trips), ``<unk>=0, <s>=1, </s>=2``,
``<pad>=3``, identity normalisation, digits split, a dummy prefix space. Trained on the training
split's captions and SMILES plus the prompt templates' text; written as ``tokenizer.model`` +
``tokenizer_config.json`` + ``special_tokens_map.json`` (no BOS/EOS added by the tokenizer: the
data pipeline adds BOS and EOS itself). ``AutoTokenizer.from_pretrained(dir)`` gives a
``LlamaTokenizer`` (transformers 5 converts the model to its fast backend on load) whose ids equal
sentencepiece's own. The model bytes are deterministic for the same training text.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from almol_jax.data.tokenizer import LLAMA_SPECIAL_TOKENS as SPECIAL_TOKENS
from almol_jax.data.tokenizer import write_llama_tokenizer_config

MIN_VOCAB_SIZE = 300  # 4 specials + 256 byte pieces + room for merges


def train_sentencepiece(
    texts: Iterable[str],
    out_dir: str | Path,
    *,
    vocab_size: int = 1024,
    seed: int = 0,
    num_threads: int = 1,
) -> Path:
    """Train the BPE model on ``texts`` and write the tokenizer directory; returns ``out_dir``."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"{vocab_size=} is below {MIN_VOCAB_SIZE} (256 byte-fallback pieces + specials)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sentences = [t for t in texts if t]
    if not sentences:
        raise ValueError("no text to train the tokenizer on")
    model = (
        io.BytesIO()
    )  # not model_prefix: the model would record the (temporary) path it was saved to
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        max_sentence_length=1 << 16,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        unk_piece=SPECIAL_TOKENS["unk_token"],
        bos_piece=SPECIAL_TOKENS["bos_token"],
        eos_piece=SPECIAL_TOKENS["eos_token"],
        pad_piece=SPECIAL_TOKENS["pad_token"],
        hard_vocab_limit=False,
        seed_sentencepiece_size=100_000,
        num_threads=num_threads,
        minloglevel=2,
    )
    (out / "tokenizer.model").write_bytes(model.getvalue())
    write_llama_tokenizer_config(out, model_max_length=4096, padding_side="right")
    return out


def load_hf_tokenizer(tokenizer_dir: str | Path):
    """The transformers tokenizer of a saved directory (``AutoTokenizer.from_pretrained``)."""
    from transformers import AutoTokenizer  # noqa: PLC0415 (heavy import, only when asked)

    return AutoTokenizer.from_pretrained(str(tokenizer_dir), trust_remote_code=False)


def check_round_trip(tokenizer, texts: Sequence[str]) -> int:
    """Number of ``texts`` whose ``decode(encode(text))`` differs from the text (0 is right)."""
    bad = 0
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if tokenizer.decode(ids, skip_special_tokens=False) != text:
            bad += 1
    return bad
