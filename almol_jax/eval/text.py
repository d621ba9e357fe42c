"""Text-side metrics (smiles2caption), matching MolT5's ``text_translation_metrics.py``.

- Tokens: SciBERT uncased WordPiece, built with the ``tokenizers`` library from ``vocab.txt``
  (BertNormalizer lower-casing, BertPreTokenizer, WordPiece ``##``): the same tokens as
  ``BertTokenizerFast.from_pretrained``; cut to the first 512, [CLS]/[SEP]/[PAD] dropped.
- BLEU-2/4: nltk corpus BLEU on those tokens (via :mod:`almol_jax.eval.bleu`).
- METEOR: nltk ``meteor_score([ref_tokens], out_tokens)`` with WordNet 3.0, in
  :mod:`almol_jax.eval.meteor` (the same passes with per-word stems and synonym sets memoised).
- ROUGE-1/2/L: F-measure of ``rouge_score`` on the raw strings, no stemmer, re-implemented
  (its tokenizer is one regex; its counts are the n-gram overlaps) so that scoring needs no nltk.
An output starting with ``"[CLS] "`` loses that prefix first, as in the reference script.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path

from almol_jax.eval.meteor import MeteorScorer, meteor_scorer  # noqa: F401 (re-exported)

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

    def tokenize_many(self, texts: Sequence[str], memo: dict | None = None) -> list[list[str]]:
        """:meth:`tokenize` of each text, each distinct space-separated piece encoded once.

        The same tokens: the normalizer works character by character (clean-up, CJK padding,
        accent stripping, lower-casing; no context crosses a space), the pre-tokenizer splits
        at every space, and no special token contains one. Captions repeat their words, so
        this encodes a fraction of the pieces. ``memo`` (piece -> tokens, filled here) lets
        several calls of one scoring run share the pieces seen.
        """
        memo = {} if memo is None else memo
        encode = self._tok.encode
        out = []
        for text in texts:
            tokens: list[str] = []
            for piece in text.split(" "):
                hit = memo.get(piece)
                if hit is None:
                    hit = memo[piece] = encode(piece, add_special_tokens=False).tokens
                tokens += hit
            out.append(tokens)
        return out

    def metric_tokens_many(
        self, texts: Sequence[str], max_length: int = 512, memo: dict | None = None
    ) -> list[list[str]]:
        """:meth:`metric_tokens` of each text (via :meth:`tokenize_many`)."""
        return [
            [t for t in tokens[:max_length] if t not in DROPPED_TOKENS]
            for tokens in self.tokenize_many(texts, memo)
        ]


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


_ROUGE_TOKEN_RE = re.compile(r"[a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's tokens without stemming: the runs of [a-z0-9] of the lower-cased text
    (what it gets by replacing the other characters with spaces and splitting)."""
    return _ROUGE_TOKEN_RE.findall(text.lower())


def _fmeasure(precision: float, recall: float) -> float:
    """rouge_score.scoring.fmeasure."""
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def rouge_rows(references: Sequence[str], outputs: Sequence[str]) -> list[dict[str, float]]:
    """ROUGE-1/2/L F-measures of many rows, as ``RougeScorer(['rouge1','rouge2','rougeL'])``
    called the reference's way, ``score(target=output, prediction=reference)``.

    The same integers (n-gram intersections via :mod:`almol_jax.eval.ngrams`, the LCS via
    :func:`lcs_length`) in rouge-score's float operations, so the same floats.
    """
    from almol_jax.eval.ngrams import overlap_counts

    targets = [rouge_tokens(o) for o in outputs]
    predictions = [rouge_tokens(r) for r in references]
    rows = []
    for target, prediction, overlaps in zip(
        targets, predictions, overlap_counts(targets, predictions, 2), strict=True
    ):
        row = {}
        for n, intersection in enumerate(overlaps, start=1):
            precision = intersection / max(len(prediction) - n + 1, 1)
            recall = intersection / max(len(target) - n + 1, 1)
            row[f"rouge{n}"] = _fmeasure(precision, recall)
        if not target or not prediction:
            row["rougeL"] = 0
        else:
            lcs = lcs_length(target, prediction)
            row["rougeL"] = _fmeasure(lcs / len(prediction), lcs / len(target))
        rows.append(row)
    return rows


class Rouge:
    """ROUGE-1/2/L F-measures of one row exactly as ``RougeScorer(['rouge1','rouge2','rougeL'])``
    (see :func:`rouge_rows`)."""

    def __call__(self, reference: str, output: str) -> dict[str, float]:
        """ROUGE of one row, called as the reference does: ``score(target=output, prediction=reference)``."""
        return rouge_rows([reference], [output])[0]
