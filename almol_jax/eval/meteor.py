"""METEOR exactly as nltk 3.10's ``meteor_score([reference], hypothesis)``, with memoised words.

nltk aligns a hypothesis to its reference in three passes (exact words, Porter stems, WordNet
synonyms), each greedy from the last hypothesis word backwards, then scores matches and chunks.
Its cost is in re-deriving per-word facts on every row: the stem of a word, and the set of
lemma names of every WordNet synset of a word (``wordnet.synsets`` parses each synset's full
data line: gloss, pointers, frames). :class:`MeteorScorer` runs the same passes, in the same
order, on the same words, with each word's stem and synonym set computed once per process; the
synonym set reads only the lemma names from each synset's data line (nltk's ``_morphy`` and
index give the synsets). Tested equal to nltk's ``meteor_score`` on ChEBI-20 and random rows.
"""

from __future__ import annotations

import functools
import os
import re
from collections import defaultdict
from collections.abc import Sequence

# nltk: the lemma name, then an optional syntactic marker such as "(a)" or "(ip)".
_MARKER_RE = re.compile(r"(.*?)(\([^()]*\))?$")


class MeteorScorer:
    """nltk METEOR (alpha 0.9, beta 3, gamma 0.5) with one WordNet 3.0 reader; pickles as its
    WordNet source only.

    Loading WordNet takes a second, so :func:`meteor_scorer` keeps a few loaded scorers per
    process (read-only data: repeated validation runs reuse it).
    """

    alpha, beta, gamma = 0.9, 3.0, 0.5

    def __init__(self, wordnet_source):
        from nltk.stem.porter import PorterStemmer

        from almol_jax.eval.resources import load_wordnet

        self.wordnet_source = wordnet_source
        self._reader = load_wordnet(wordnet_source)
        self._pid = os.getpid()
        self._porter = PorterStemmer()
        self._stems: dict[str, str] = {}
        self._synonyms: dict[str, frozenset] = {}
        self._names: dict[tuple[str, int], list[str]] = {}

    @property
    def wordnet_version(self) -> str:
        return self._reader.get_version()

    def __getstate__(self):
        return {"wordnet_source": self.wordnet_source}

    def __setstate__(self, state):
        self.__init__(state["wordnet_source"])

    # ------------------------------------------------------------------ per-word facts

    def _stem(self, word: str) -> str:
        hit = self._stems.get(word)
        if hit is None:
            hit = self._stems[word] = self._porter.stem(word)
        return hit

    def _lemma_names(self, pos: str, offset: int) -> list[str]:
        """``[l.name() for l in synset_from_pos_and_offset(pos, offset).lemmas()]``, parsing
        only the lemma fields of the data line."""
        key = (pos, offset)
        hit = self._names.get(key)
        if hit is None:
            data = self._reader._data_file(pos)
            data.seek(offset)
            line = data.readline()
            data.seek(0)
            if not (line[:8].isalnum() and line[:8] == f"{offset:08d}"):
                # nltk warns and yields None here, and METEOR would then fail; defer to it.
                synset = self._reader.synset_from_pos_and_offset(pos, offset)
                hit = [lemma.name() for lemma in synset.lemmas()]
            else:
                fields = line.strip().split("|")[0].split()
                n_lemmas = int(fields[3], 16)
                hit = [_MARKER_RE.match(f).group(1) for f in fields[4 : 4 + 2 * n_lemmas : 2]]
            self._names[key] = hit
        return hit

    def synonyms(self, word: str) -> frozenset:
        """nltk METEOR's ``hypothesis_syns`` of a (lower-cased) word: the names without '_' of
        the lemmas of ``wordnet.synsets(word)``, plus the word itself."""
        hit = self._synonyms.get(word)
        if hit is None:
            from nltk.corpus.reader.wordnet import POS_LIST

            reader = self._reader
            lemma = word.lower()  # as wordnet.synsets does
            index = reader._lemma_pos_offset_map
            names = {word}
            for pos in POS_LIST:
                for form in reader._morphy(lemma, pos, True):
                    for offset in index[form].get(pos, []):
                        names.update(n for n in self._lemma_names(pos, offset) if "_" not in n)
            hit = self._synonyms[word] = frozenset(names)
        return hit

    # ------------------------------------------------------------------ scoring

    def __call__(self, reference_tokens: Sequence[str], output_tokens: Sequence[str]) -> float:
        """``nltk.translate.meteor_score.meteor_score([reference], output)``."""
        if os.getpid() != self._pid:
            # A forked child shares the parent's open data files, file offsets included:
            # concurrent seeks would corrupt reads, so each process opens its own.
            self._reader._data_file_map = {}
            self._pid = os.getpid()
        hyp = list(enumerate(w.lower() for w in output_tokens))
        ref = list(enumerate(w.lower() for w in reference_tokens))
        exact, hyp_left, ref_left = _match_words(hyp, ref)
        stem = self._stem
        stemmed, hyp_left, ref_left = _match_words(
            [(i, stem(w)) for i, w in hyp_left], [(j, stem(w)) for j, w in ref_left]
        )
        synonym = self._match_synonyms(hyp_left, ref_left)
        matches = sorted(exact + stemmed + synonym, key=lambda pair: pair[0])
        count = len(matches)
        alpha, beta, gamma = self.alpha, self.beta, self.gamma
        try:
            precision = float(count) / len(hyp)
            recall = float(count) / len(ref)
            fmean = (precision * recall) / (alpha * precision + (1 - alpha) * recall)
            frag_frac = float(_count_chunks(matches)) / count
        except ZeroDivisionError:
            return 0.0
        penalty = gamma * frag_frac**beta
        return (1 - penalty) * fmean

    def _match_synonyms(self, hyp: list, ref: list) -> list:
        """nltk ``_enum_wordnetsyn_match``: from the last hypothesis word back, the reference
        word (latest position first) among the hypothesis word's synonyms."""
        matches = []
        ref_positions = defaultdict(list)
        for j, (_, word) in enumerate(ref):
            ref_positions[word].append(j)
        for i in range(len(hyp) - 1, -1, -1):
            best_j, best_word = -1, None
            for syn in self.synonyms(hyp[i][1]):
                positions = ref_positions.get(syn)
                if positions and positions[-1] > best_j:
                    best_j, best_word = positions[-1], syn
            if best_word is not None:
                ref_positions[best_word].pop()
                matches.append((hyp[i][0], ref[best_j][0]))
        return matches


def _match_words(hyp: list, ref: list) -> tuple[list, list, list]:
    """nltk ``_match_enums``: exact matches of (index, word) lists, from the last hypothesis
    word back to the latest free reference position; returns (matches, hyp left, ref left)."""
    ref_positions: dict[str, list[int]] = {}
    for j, (_, word) in enumerate(ref):
        ref_positions.setdefault(word, []).append(j)
    matches, hyp_left, ref_used = [], [], set()
    for i in range(len(hyp) - 1, -1, -1):
        positions = ref_positions.get(hyp[i][1])
        if positions:
            j = positions.pop()
            ref_used.add(j)
            matches.append((hyp[i][0], ref[j][0]))
        else:
            hyp_left.append(hyp[i])
    hyp_left.reverse()
    ref_left = [pair for j, pair in enumerate(ref) if j not in ref_used] if ref_used else ref
    return matches, hyp_left, ref_left


def _count_chunks(matches: list) -> int:
    """nltk ``_count_chunks``: runs of matches adjacent in both hypothesis and reference."""
    chunks = 1
    for (h0, r0), (h1, r1) in zip(matches, matches[1:], strict=False):
        if not (h1 == h0 + 1 and r1 == r0 + 1):
            chunks += 1
    return chunks


@functools.lru_cache(maxsize=4)
def meteor_scorer(wordnet_source) -> MeteorScorer:
    """A (cached) :class:`MeteorScorer` for a :class:`~almol_jax.eval.resources.WordNetSource`."""
    return MeteorScorer(wordnet_source)
