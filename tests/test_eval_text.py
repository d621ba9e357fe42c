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
    assert dict(fast._lemma_pos_offset_map) == dict(plain._lemma_pos_offset_map)
    assert fast.satellite_offsets == plain.satellite_offsets
    rows = _rows(shared_data / "lpm-24" / "smiles2caption_example.txt")[:40]
    for r in rows:
        ref, out = tok.metric_tokens(r["ground truth"]), tok.metric_tokens(r["output"])
        assert scorer(ref, out) == meteor_score([ref], out, wordnet=plain)
    # nltk's own doctest value.
    hyp = "It is a guide to action which ensures that the military always obeys the commands of the party".split()
    ref = "It is a guide to action that ensures that the military will forever heed Party commands".split()
    np.testing.assert_allclose(scorer(ref, hyp), 0.6944, rtol=0, atol=5e-5)


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
