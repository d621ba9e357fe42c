"""Unit tests of the evaluator's pieces against independent implementations.

Each fast path is compared with the library it replaces: corpus BLEU from row statistics vs
nltk ``corpus_bleu``; bit-parallel LCS / ROUGE vs rouge_score; chrF from row statistics vs
sacrebleu's public API; batched numpy n-gram overlaps vs Counters; FTS vs RDKit's legacy
fingerprint functions (what the scorers call); the process pool vs a serial loop.
"""

import math
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from almol_jax.eval import bleu as bleu_lib
from almol_jax.eval.chrf import (
    ChrfConfig,
    batch_row_chrf,
    corpus_chrf,
    corpus_chrf_from_stats,
    row_chrf,
)
from almol_jax.eval.length_bias import length_stats
from almol_jax.eval.ngrams import counter_overlap, overlap_counts
from almol_jax.eval.text import Rouge, lcs_length, rouge_rows

tokens = st.lists(st.sampled_from(list("abcde")), max_size=12)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(tokens, tokens), min_size=1, max_size=8))
def test_corpus_bleu_from_stats_matches_nltk(pairs):
    import warnings

    from nltk.translate.bleu_score import corpus_bleu

    stats = [bleu_lib.row_stats(ref, hyp) for ref, hyp in pairs]
    assert bleu_lib.batch_row_stats([r for r, _ in pairs], [h for _, h in pairs]) == stats
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns about zero n-gram overlaps
        for weights in ((0.25, 0.25, 0.25, 0.25), (0.5, 0.5)):
            expected = corpus_bleu([[r] for r, _ in pairs], [h for _, h in pairs], weights=weights)
            assert bleu_lib.corpus_bleu_from_stats(stats, weights) == float(expected)


def test_corpus_bleu_golden():
    # nltk's own doctest corpus: 0.5920... for BLEU-4.
    hyp1 = "It is a guide to action which ensures that the military always obeys the commands of the party".split()
    ref1a = "It is a guide to action that ensures that the military will forever heed Party commands".split()
    hyp2 = "he read the book because he was interested in world history".split()
    ref2a = "he was interested in world history because he read the book".split()
    stats = [bleu_lib.row_stats(ref1a, hyp1), bleu_lib.row_stats(ref2a, hyp2)]
    from nltk.translate.bleu_score import corpus_bleu

    expected = corpus_bleu([[ref1a], [ref2a]], [hyp1, hyp2])
    np.testing.assert_allclose(bleu_lib.corpus_bleu_from_stats(stats), expected, rtol=0, atol=0)
    assert bleu_lib.corpus_bleu_from_stats([bleu_lib.row_stats(["a"], [])]) == 0.0


@settings(max_examples=30, deadline=None)
@given(tokens, tokens)
def test_lcs_length_matches_rouge_table(a, b):
    from rouge_score.rouge_scorer import _lcs_table

    expected = _lcs_table(a, b)[-1][-1] if a and b else 0
    assert lcs_length(a, b) == expected


words = st.lists(
    st.sampled_from(["the", "molecule", "is", "an", "acid", "base", "of", "ß", "C1=CC", "a-b", ""]),
    max_size=15,
).map(" ".join)


@settings(max_examples=30, deadline=None)
@given(words, words)
def test_rouge_matches_rouge_score(ref, out):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    expected = scorer.score(out, ref)
    got = Rouge()(ref, out)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert got[key] == expected[key].fmeasure


texts = st.one_of(words, st.text(max_size=40), st.text(alphabet="aB1 .-İıß\u00e9\n", max_size=40))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(texts, texts), max_size=80))
def test_rouge_rows_match_rouge_score(pairs):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    got = rouge_rows([r for r, _ in pairs], [o for _, o in pairs])
    for (ref, out), row in zip(pairs, got, strict=True):
        expected = scorer.score(out, ref)
        for key in ("rouge1", "rouge2", "rougeL"):
            assert row[key] == expected[key].fmeasure, (ref, out, key)


sequences = st.one_of(
    st.text(max_size=30),
    st.text(alphabet="abcé中\U0001f600 ", max_size=40),
    st.lists(st.sampled_from(["a", "b", "##c", "[UNK]", 7, ("t",)]), max_size=25),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(sequences, sequences), max_size=150), st.integers(1, 7))
def test_overlap_counts_equal_counters(pairs, order):
    outs, refs = [o for o, _ in pairs], [r for _, r in pairs]
    want = [counter_overlap(o, r, order) for o, r in pairs]
    assert overlap_counts(outs, refs, order) == want


def test_overlap_counts_split_batches_whose_keys_do_not_fit():
    rng = random.Random(1)
    # ~2,000 distinct symbols: 11 bits each, 6 of them per key do not fit with the row bits.
    outs = ["".join(chr(0x4E00 + rng.randrange(2000)) for _ in range(300)) for _ in range(40)]
    refs = [o[::-1] + o[:50] for o in outs]
    want = [counter_overlap(o, r, 6) for o, r in zip(outs, refs, strict=True)]
    assert overlap_counts(outs, refs, 6) == want
    assert overlap_counts(["abcabc", ""], ["bcab", "x"], 3) == [[4, 3, 2], [0, 0, 0]]
    with pytest.raises(ValueError, match="max_order=8"):
        overlap_counts(["a"], ["a"], 8)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(words, words), min_size=1, max_size=6), st.sampled_from([0, 2]))
def test_chrf_from_stats_matches_sacrebleu(pairs, word_order):
    config = ChrfConfig(word_order=word_order)
    metric = config.metric()
    rows = [row_chrf(metric, ref, out) for ref, out in pairs]
    for (ref, out), (sentence, _) in zip(pairs, rows, strict=True):
        assert sentence == config.metric().sentence_score(out, [ref]).score
    refs, outs = [p[0] for p in pairs], [p[1] for p in pairs]
    assert corpus_chrf_from_stats(metric, [s for _, s in rows]) == corpus_chrf(config, refs, outs)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(texts, texts), min_size=1, max_size=70), st.sampled_from([0, 2]))
def test_batch_row_chrf_matches_sacrebleu(pairs, word_order):
    config = ChrfConfig(word_order=word_order, char_order=4 if word_order else 6)
    refs, outs = [p[0] for p in pairs], [p[1] for p in pairs]
    rows = batch_row_chrf(config.metric(), refs, outs)
    for (ref, out), (sentence, _) in zip(pairs, rows, strict=True):
        assert sentence == config.metric().sentence_score(out, [ref]).score
    assert corpus_chrf_from_stats(config.metric(), [s for _, s in rows]) == corpus_chrf(
        config, refs, outs
    )


def test_chrf_config_rejects_bad_values():
    with pytest.raises(ValueError, match="char_order=0"):
        ChrfConfig(char_order=0)


def test_length_stats_golden():
    stats = length_stats({"chars": ([2, 4, 6, 8], [3, 4, 4, 12])}, {"s": [0.1, 0.2, None, 0.9]})
    np.testing.assert_allclose(
        stats["length_chars_diff_mean"], (1 + 0 - 2 + 4) / 4, rtol=0, atol=1e-12
    )
    np.testing.assert_allclose(stats["length_chars_abs_diff_mean"], 7 / 4, rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats["length_chars_ratio"], 23 / 20, rtol=0, atol=1e-12)
    assert stats["length_chars_longer_frac"] == 0.5 and stats["length_chars_shorter_frac"] == 0.25
    from scipy import stats as sps

    x, y = np.array([3, 4, 12.0]), np.array([0.1, 0.2, 0.9])
    np.testing.assert_allclose(
        stats["corr_s_vs_out_chars_pearson"], sps.pearsonr(x, y)[0], rtol=1e-12, atol=0
    )
    np.testing.assert_allclose(
        stats["corr_s_vs_out_chars_spearman"], sps.spearmanr(x, y)[0], rtol=1e-12, atol=0
    )
    # Undefined correlations are NaN, not errors.
    flat = length_stats({"chars": ([1, 1], [1, 1])}, {"s": [0.5, 0.5]})
    assert math.isnan(flat["corr_s_vs_out_chars_pearson"])


def test_spearman_ties_match_scipy():
    from scipy import stats as sps

    rng = random.Random(0)
    x = [rng.randint(0, 5) for _ in range(50)]
    y = [rng.random() for _ in range(50)]
    got = length_stats({"t": ([0] * 50, x)}, {"s": y})["corr_s_vs_out_t_spearman"]
    np.testing.assert_allclose(got, sps.spearmanr(x, y)[0], rtol=1e-12, atol=0)


def _times(state, chunk):
    return [state * x for x in chunk]


def _slow_with_pid(state, chunk):
    parent_pid, marker = state
    time.sleep(0.0005 * len(chunk))
    if os.getpid() != parent_pid:
        marker.touch()
    else:
        _wait_for_a_worker(marker)
    return [(x, os.getpid()) for x in chunk]


def _wait_for_a_worker(marker: Path) -> None:
    """This process's chunks wait until a worker has run `fn` once (else, on a slow machine, this
    process could take every row before a worker starts, and nothing would fail)."""
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert time.monotonic() < deadline, "no worker process ran a chunk within 120 s"
        time.sleep(0.01)


def _fails_in_workers(state, chunk):
    parent_pid, marker = state
    if os.getpid() != parent_pid:
        marker.touch()
        raise KeyError("raised in a worker")
    _wait_for_a_worker(marker)
    return list(chunk)


def _dies_in_workers(state, chunk):
    parent_pid, marker = state
    if os.getpid() != parent_pid:
        marker.touch()
        os._exit(3)
    _wait_for_a_worker(marker)
    return list(chunk)


def test_map_chunks_parallel_equals_serial():
    from almol_jax.eval.parallel import map_chunks

    items = list(range(1000))
    serial = map_chunks(_times, items, state=3, num_workers=1)
    parallel = map_chunks(_times, items, state=3, num_workers=2, start_method="fork")
    assert serial == parallel == [3 * x for x in items]
    with pytest.raises(ValueError, match="num_workers=0"):
        map_chunks(_times, items, num_workers=0)


def test_chunk_map_shares_rows_between_workers_and_this_process(tmp_path):
    from almol_jax.eval.parallel import ChunkMap

    items = list(range(2000))
    state = (os.getpid(), tmp_path / "a worker ran")
    with ChunkMap(_slow_with_pid, items, state=state, num_workers=3, progress=True) as work:
        time.sleep(0.2)  # this process is busy elsewhere first; the workers start meanwhile
        got = work.results()
    assert [x for x, _ in got] == items
    pids = {pid for _, pid in got}
    assert os.getpid() in pids and len(pids) >= 2  # the work was shared, nothing was lost


def test_chunk_map_raises_worker_errors_and_deaths(tmp_path):
    from almol_jax.eval.parallel import map_chunks

    items = list(range(600))
    failed, died = tmp_path / "failed", tmp_path / "died"
    with pytest.raises(KeyError, match="raised in a worker"):
        map_chunks(_fails_in_workers, items, state=(os.getpid(), failed), num_workers=2)
    with pytest.raises(RuntimeError, match="worker process died"):
        map_chunks(_dies_in_workers, items, state=(os.getpid(), died), num_workers=2)
