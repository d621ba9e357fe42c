"""smiles2caption pieces: SciBERT WordPiece vs transformers, memoised METEOR vs plain nltk,
L+M-24 property metrics vs a literal port of the shared task's scorer, robustness."""

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from almol_jax.eval import EvalOptions, score_smiles2caption
from almol_jax.eval.resources import MissingResourceError, Resources, find_wordnet


def _rows(path):
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture(scope="module")
def vocab(shared_data):
    return shared_data / "scibert_scivocab_uncased" / "vocab.txt"


def wordnet_installed() -> bool:
    """Whether WordNet is on this machine, checked without the finder under test: Debian's
    package (scripts/setup_test_env.sh installs it) or nltk's own lookup."""
    import nltk

    if (Path("/usr/share/wordnet") / "data.noun").is_file():
        return True
    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        return False
    return True


@pytest.fixture(scope="module")
def wordnet_source():
    """find_wordnet(); skips only where WordNet is truly absent (a finder bug fails here)."""
    if not wordnet_installed():
        pytest.skip("WordNet is not installed (run scripts/setup_test_env.sh)")
    return find_wordnet()


def test_wordpiece_matches_transformers(shared_data, vocab):
    from transformers import BertTokenizerFast

    from almol_jax.eval.text import WordPiece

    hf = BertTokenizerFast.from_pretrained(str(vocab.parent))
    ours = WordPiece(vocab)
    rows = _rows(shared_data / "chebi-20-molt5-predictions" / "molt5-large-smiles2caption.txt")[
        :300
    ]
    texts = [r["ground truth"] for r in rows] + [r["output"] for r in rows]
    texts += ["[CLS] the Molecule [SEP] is ÅÉ 中文 " + "x" * 120, "", "  \t ", "α-D-glucose"]
    for text in texts:
        assert ours.tokenize(text) == hf.tokenize(text), text
    long = " ".join(["acid"] * 700)
    assert ours.metric_tokens(long) == ["acid"] * 512


_EDGE_TEXTS = [
    "[CLS] the Molecule [SEP] is ÅÉ 中文 " + "x" * 120,
    "",
    "  \t ",
    " ΑΣ b ΣΑΣ ΣΣ. Σ",  # final sigma at a space
    "a\u00a0b \u0301x e\u0301 \u0301",  # no-break space, combining marks after spaces
    "[CLS][SEP] x[PAD]y [UNK]",
    "İstanbul İ ǅ x\u200by a\x1cb c\x00d \ufffd e",
]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=30), max_size=8))
def test_tokenize_many_equals_tokenize_on_random_text(vocab, texts):
    from almol_jax.eval.text import wordpiece

    tok = wordpiece(str(vocab))
    texts = texts + [" ".join(texts), "  ".join(texts[::-1])]
    assert tok.tokenize_many(texts) == [tok.tokenize(t) for t in texts]


def test_tokenize_many_equals_tokenize_on_chebi(shared_data, vocab):
    from almol_jax.eval.text import WordPiece

    tok = WordPiece(vocab)
    texts = list(_EDGE_TEXTS)
    for task in ("smiles2caption", "caption2smiles"):
        rows = _rows(shared_data / "chebi-20-molt5-predictions" / f"molt5-large-{task}.txt")
        texts += [r["ground truth"] for r in rows] + [r["output"] for r in rows]
    assert tok.tokenize_many(texts) == [tok.tokenize(t) for t in texts]
    assert tok.metric_tokens_many(texts[:50], 7) == [tok.metric_tokens(t, 7) for t in texts[:50]]


def test_rouge_rows_match_rouge_score_on_chebi(shared_data):
    from rouge_score import rouge_scorer

    from almol_jax.eval.text import rouge_rows

    rows = _rows(shared_data / "chebi-20-molt5-predictions" / "molt5-large-smiles2caption.txt")
    rows = rows[:400]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    got = rouge_rows([r["ground truth"] for r in rows], [r["output"] for r in rows])
    for r, row in zip(rows, got, strict=True):
        want = scorer.score(r["output"], r["ground truth"])
        assert [row[k] for k in want] == [want[k].fmeasure for k in want]


def test_fast_wordnet_and_memoised_meteor_equal_plain_nltk(shared_data, vocab, wordnet_source):
    import warnings

    from nltk.corpus.reader.wordnet import WordNetCorpusReader
    from nltk.translate.meteor_score import meteor_score

    from almol_jax.eval.text import MeteorScorer, WordPiece

    class PlainReader(WordNetCorpusReader):  # nltk's reader minus the OMW-only sense map
        def map_wn(self, version="wordnet"):
            return None

    tok = WordPiece(vocab)
    scorer = MeteorScorer(wordnet_source)  # also puts the root on nltk.data.path, as nltk requires
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = PlainReader(str(wordnet_source.nltk_root / "corpora" / "wordnet"), None)
    fast = scorer._reader
    lazy, eager = fast._lemma_pos_offset_map, plain._lemma_pos_offset_map
    for lemma in ("acid", "run", "good", "quickly", "zzzq", "acetic_acid", "'hood"):
        assert (lemma in lazy) == (lemma in eager), lemma  # before anything is parsed
        assert lazy.get(lemma) == eager.get(lemma), lemma
    assert fast.synsets("running") == plain.synsets("running")
    assert dict(lazy) == dict(eager) and len(lazy) == len(eager)  # parses the rest
    assert fast.satellite_offsets == plain.satellite_offsets
    rows = _rows(shared_data / "lpm-24" / "smiles2caption_example.txt")[:40]
    for r in rows:
        ref, out = tok.metric_tokens(r["ground truth"]), tok.metric_tokens(r["output"])
        assert scorer(ref, out) == meteor_score([ref], out, wordnet=plain)
    # nltk's own doctest value.
    hyp = "It is a guide to action which ensures that the military always obeys the commands of the party".split()
    ref = "It is a guide to action that ensures that the military will forever heed Party commands".split()
    np.testing.assert_allclose(scorer(ref, hyp), 0.6944, rtol=0, atol=5e-5)
    assert scorer(ref, hyp) == meteor_score([ref], hyp, wordnet=plain)


@pytest.fixture(scope="module")
def plain_wordnet(wordnet_source):
    """nltk's own WordNet reader (minus the OMW-only sense map) on the same files."""
    import warnings

    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    from almol_jax.eval.text import meteor_scorer

    meteor_scorer(wordnet_source)  # puts the root on nltk.data.path, as nltk requires

    class PlainReader(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            return None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PlainReader(str(wordnet_source.nltk_root / "corpora" / "wordnet"), None)


def test_meteor_equals_nltk_on_chebi_rows(shared_data, vocab, wordnet_source, plain_wordnet):
    from nltk.translate.meteor_score import meteor_score

    from almol_jax.eval.text import MeteorScorer, WordPiece

    tok = WordPiece(vocab)
    scorer = MeteorScorer(wordnet_source)  # fresh: nothing memoised yet
    rows = _rows(shared_data / "chebi-20-molt5-predictions" / "molt5-large-smiles2caption.txt")
    for r in rows[:300]:
        ref, out = tok.metric_tokens(r["ground truth"]), tok.metric_tokens(r["output"])
        assert scorer(ref, out) == meteor_score([ref], out, wordnet=plain_wordnet), r["output"]


def test_meteor_synonym_sets_equal_nltk_synsets(wordnet_source, plain_wordnet):
    from almol_jax.eval.text import MeteorScorer

    scorer = MeteorScorer(wordnet_source)
    lemmas = sorted(plain_wordnet.all_lemma_names())[::97]  # ~1,500 across all parts of speech
    words = lemmas + ["acids", "derived", "molecules", "is", "an", "##ic", "[unk]", "ran", "bases"]
    for word in words:
        want = {
            lemma.name()
            for synset in plain_wordnet.synsets(word)
            for lemma in synset.lemmas()
            if lemma.name().find("_") < 0
        } | {word}
        assert scorer.synonyms(word) == want, word


vocabulary = st.sampled_from(
    "the a an is are acid acids acidic base bases basic compound molecule molecules derives "
    "derived from of in which conjugate salt salts ran run running good better [UNK] Acid".split()
)


@settings(max_examples=60, deadline=None)
@given(st.lists(vocabulary, max_size=25), st.lists(vocabulary, max_size=25))
def test_meteor_equals_nltk_on_random_rows(wordnet_source, plain_wordnet, ref, out):
    from nltk.translate.meteor_score import meteor_score

    from almol_jax.eval.text import meteor_scorer

    assert meteor_scorer(wordnet_source)(ref, out) == meteor_score(
        [ref], out, wordnet=plain_wordnet
    )


# ---- a literal port of L+M-24's text_property_metrics.py, as the independent oracle ----


def _contains(small, big):
    for i in range(len(big) - len(small) + 1):
        for j in range(len(small)):
            if big[i + j] != small[j]:
                break
        else:
            return True
    return False


def _take_average(d):
    for key in d:
        if isinstance(d[key], dict):
            d[key] = _take_average(d[key])
            return d
    vals = [d[k] for k in d if d[k] is not None]
    return np.mean(vals) if len(vals) != 0 else 0.0


def _overall(values):
    tree = {}
    for name, v in values.items():
        node = tree
        parts = name.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    while not isinstance(tree, float):
        tree = _take_average(tree)
    return tree


def _reference_props(tokenize, refs, outs, props, combos):
    tp, fp, fn, tn = (defaultdict(int) for _ in range(4))
    prop_tok = [(tokenize(p.split("__")[-1].lower()), p) for p in props]
    for gt, out in zip(refs, outs, strict=True):
        gtl, outl = tokenize(gt.lower()), tokenize(out.lower())
        for pl, prop in prop_tok:
            g, o = _contains(pl, gtl), _contains(pl, outl)
            tp[prop] += g and o
            fn[prop] += g and not o
            fp[prop] += (not g) and o
            tn[prop] += (not g) and (not o)
    z = lambda n, d: n / d if d else None
    out = {
        "props_precision": _overall({p: z(tp[p], tp[p] + fp[p]) for p in props}),
        "props_recall": _overall({p: z(tp[p], tp[p] + fn[p]) for p in props}),
        "props_f1": _overall({p: z(2 * tp[p], 2 * tp[p] + fp[p] + fn[p]) for p in props}),
    }
    TP = TN = FP = FN = 0
    ct = [(tokenize(a.lower()), tokenize(b.lower())) for a, b in combos]
    for gt, o in zip(refs, outs, strict=True):
        gtl, outl = tokenize(gt.lower()), tokenize(o.lower())
        for c1, c2 in ct:
            g1, o1, g2, o2 = (
                _contains(c1, gtl),
                _contains(c1, outl),
                _contains(c2, gtl),
                _contains(c2, outl),
            )
            TP += (g1 and g2) and (o1 and o2)
            FN += (g1 and g2) and (not o1 or not o2)
            FP += (not g1 or not g2) and (o1 and o2)
            TN += (not g1 or not g2) and (not o1 or o2)
    out["combo_recall"] = z(TP, TP + FN)
    out["combo_accuracy"] = z(TN + TP, TN + TP + FN + FP)
    return out


def test_property_metrics_match_scorer_port(shared_data, vocab):
    import ast

    from almol_jax.eval.properties import flatten, load_combos, property_metrics
    from almol_jax.eval.text import WordPiece

    tok = WordPiece(vocab)
    rows = _rows(shared_data / "lpm-24" / "smiles2caption_example.txt")[:50]  # the port is slow
    refs, outs = [r["ground truth"] for r in rows], [r["output"] for r in rows]
    props = flatten(json.loads((shared_data / "lpm-24" / "nested_props.json").read_text()))
    combos_path = shared_data / "lpm-24" / "train_withheld_combos.txt"
    combos = load_combos(combos_path)
    assert combos[0] == ast.literal_eval(combos_path.read_text().splitlines()[0].split("\t")[0])
    got, per_row = property_metrics(tok.tokenize, refs, outs, props, combos)
    want = _reference_props(tok.tokenize, refs, outs, props, combos)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-12, err_msg=key)
    assert len(per_row) == len(rows) and got["props_f1"] > 0


def test_missing_vocab_raises_or_skips(tmp_path):
    refs, outs = ["The molecule is an acid."], ["The molecule is a base."]
    opts = EvalOptions(scibert_vocab=str(tmp_path / "vocab.txt"), num_workers=1)
    with pytest.raises(MissingResourceError, match="SciBERT vocabulary"):
        score_smiles2caption(None, refs, outs, options=opts)
    resources = Resources()
    opts = EvalOptions(
        scibert_vocab=str(tmp_path / "vocab.txt"), num_workers=1, skip_unavailable=True
    )
    metrics, _ = score_smiles2caption(None, refs, outs, options=opts, resources=resources)
    assert math.isnan(metrics["bleu4"]) and math.isnan(metrics["meteor"])
    assert metrics["rouge1"] > 0 and "bleu4" in resources.skipped and "meteor" in resources.skipped


captions = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["", " ", "[CLS] The molecule is a base.", "Ünïcödé 分子 ☃", "acid " * 300]),
)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(captions, captions), min_size=1, max_size=5))
def test_random_captions_never_crash(shared_data, wordnet_source, pairs):
    opts = EvalOptions(scibert_vocab=str(shared_data / "scibert_scivocab_uncased"), num_workers=1)
    metrics, rows = score_smiles2caption(
        None, [p[0] for p in pairs], [p[1] for p in pairs], options=opts
    )
    assert len(rows) == len(pairs)
    for key in ("bleu2", "bleu4", "rouge1", "rouge2", "rougeL", "meteor"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert 0.0 <= metrics["chrf"] <= 100.0


def test_worker_processes_give_the_serial_numbers(shared_data, vocab, wordnet_source):
    # 400 rows: enough for the pools (tokens, counts, METEOR) to be used, and compared per row.
    rows = _rows(shared_data / "chebi-20-molt5-predictions" / "molt5-large-smiles2caption.txt")
    refs, outs = [r["ground truth"] for r in rows[:400]], [r["output"] for r in rows[:400]]
    got = {}
    for workers in (1, 2, 3):
        opts = EvalOptions(scibert_vocab=str(vocab), num_workers=workers)
        got[workers] = score_smiles2caption(None, refs, outs, options=opts)
    for workers in (2, 3):
        metrics, per_row = got[workers]
        assert per_row == got[1][1]
        for key, value in got[1][0].items():
            assert value == metrics[key] or (math.isnan(value) and math.isnan(metrics[key])), key
