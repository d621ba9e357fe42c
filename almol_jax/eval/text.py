"""Text-side metrics (smiles2caption), matching MolT5's ``text_translation_metrics.py``.

- Tokens: SciBERT uncased WordPiece, built with the ``tokenizers`` library from ``vocab.txt``
  (BertNormalizer lower-casing, BertPreTokenizer, WordPiece ``##``): the same tokens as
  ``BertTokenizerFast.from_pretrained``; cut to the first 512, [CLS]/[SEP]/[PAD] dropped.
- BLEU-2/4: nltk corpus BLEU on those tokens (via :mod:`almol_jax.eval.bleu`).
- METEOR: nltk ``meteor_score([ref_tokens], out_tokens)`` with WordNet 3.0; the WordNet lookups
  and Porter stems are memoised per word (same results, several times faster).
- ROUGE-1/2/L: F-measure of ``rouge_score`` on the raw strings, no stemmer.
An output starting with ``"[CLS] "`` loses that prefix first, as in the reference script.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
DROPPED_TOKENS = frozenset({"[PAD]", "[CLS]", "[SEP]"})


def strip_cls(text: str) -> str:
    """The reference scorer's clean-up of generated captions."""
    return text[6:] if text.startswith("[CLS] ") else text


class WordPiece:
    """SciBERT uncased WordPiece tokenizer (``tokenizers`` library) from a vocab.txt path."""

    def __init__(self, vocab_path: str | Path, *, lowercase: bool = True):
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

        self.vocab_path = str(vocab_path)
        self.lowercase = lowercase
        vocab = {}
        with open(vocab_path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                vocab[line.rstrip("\n")] = i
        if "[UNK]" not in vocab:
            raise ValueError(f"{vocab_path} has no [UNK] token: not a BERT vocab.txt")
        tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.add_special_tokens([t for t in SPECIAL_TOKENS if t in vocab])
        self._tok = tok

    def __getstate__(self):
        return {"vocab_path": self.vocab_path, "lowercase": self.lowercase}

    def __setstate__(self, state):
        self.__init__(state["vocab_path"], lowercase=state["lowercase"])

    def tokenize(self, text: str) -> list[str]:
        """All WordPiece tokens of ``text`` (no special tokens added, no truncation)."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def metric_tokens(self, text: str, max_length: int = 512) -> list[str]:
        """The scorer's tokens: first ``max_length`` tokens, [CLS]/[SEP]/[PAD] dropped."""
        return [t for t in self.tokenize(text)[:max_length] if t not in DROPPED_TOKENS]


class _MemoWordNet:
    """``synsets(word)`` of a WordNet reader, memoised (METEOR asks for the same words often)."""

    def __init__(self, reader):
        self._reader = reader
        self._cache: dict[str, list] = {}

    def synsets(self, word):
        hit = self._cache.get(word)
        if hit is None:
            hit = self._cache[word] = self._reader.synsets(word)
        return hit


class _MemoStemmer:
    """A memoised nltk PorterStemmer (``stem`` is pure)."""

    def __init__(self):
        from nltk.stem.porter import PorterStemmer

        self._stemmer = PorterStemmer()
        self._cache: dict[str, str] = {}

    def stem(self, word):
        hit = self._cache.get(word)
        if hit is None:
            hit = self._cache[word] = self._stemmer.stem(word)
        return hit


class MeteorScorer:
    """nltk METEOR with memoised WordNet and stemmer; pickles as its WordNet source only.

    Loading WordNet takes seconds, so :func:`meteor_scorer` keeps a few loaded scorers per
    process (a cache of read-only data: repeated validation runs reuse it).
    """

    def __init__(self, wordnet_source):
        from almol_jax.eval.resources import load_wordnet

        self.wordnet_source = wordnet_source
        self._reader = load_wordnet(wordnet_source)
        self._pid = os.getpid()
        self._wordnet = _MemoWordNet(self._reader)
        self._stemmer = _MemoStemmer()

    @property
    def wordnet_version(self) -> str:
        return self._reader.get_version()

    def __getstate__(self):
        return {"wordnet_source": self.wordnet_source}

    def __setstate__(self, state):
        self.__init__(state["wordnet_source"])

    def __call__(self, reference_tokens: Sequence[str], output_tokens: Sequence[str]) -> float:
        from nltk.translate.meteor_score import meteor_score

        if os.getpid() != self._pid:
            # A forked child shares the parent's open data files, file offsets included:
            # concurrent seeks would corrupt reads, so each process opens its own.
            self._reader._data_file_map = {}
            self._pid = os.getpid()
        return float(
            meteor_score(
                [list(reference_tokens)],
                list(output_tokens),
                stemmer=self._stemmer,
                wordnet=self._wordnet,
            )
        )


@functools.lru_cache(maxsize=4)
def meteor_scorer(wordnet_source) -> MeteorScorer:
    """A (cached) :class:`MeteorScorer` for a :class:`~almol_jax.eval.resources.WordNetSource`."""
    return MeteorScorer(wordnet_source)


@functools.lru_cache(maxsize=4)
def wordpiece(vocab_path: str) -> WordPiece:
    """A (cached) :class:`WordPiece` tokenizer for a vocab.txt path."""
    return WordPiece(vocab_path)


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (bit-parallel, Hyyro 2004).

    Same integer as rouge_score's O(len(a)*len(b)) Python table, ~20x faster on captions.
    """
    if not a or not b:
        return 0
    masks: dict = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


class Rouge:
    """ROUGE-1/2/L F-measures exactly as ``RougeScorer(['rouge1','rouge2','rougeL'])``.

    Uses rouge_score's own tokenizer and n-gram scoring; only the LCS table is replaced by
    :func:`lcs_length` (the same integer), so the floats are identical.
    """

    def __init__(self):
        from rouge_score import tokenizers

        self._tokenizer = tokenizers.DefaultTokenizer(use_stemmer=False)

    def __call__(self, reference: str, output: str) -> dict[str, float]:
        """ROUGE of one row, called as the reference does: ``score(target=output, prediction=reference)``."""
        from rouge_score import rouge_scorer as rs
        from rouge_score import scoring

        target = self._tokenizer.tokenize(output)
        prediction = self._tokenizer.tokenize(reference)
        row = {}
        for n in (1, 2):
            row[f"rouge{n}"] = rs._score_ngrams(
                rs._create_ngrams(target, n), rs._create_ngrams(prediction, n)
            ).fmeasure
        if not target or not prediction:
            row["rougeL"] = 0
        else:
            lcs = lcs_length(target, prediction)
            row["rougeL"] = scoring.fmeasure(lcs / len(prediction), lcs / len(target))
        return row
