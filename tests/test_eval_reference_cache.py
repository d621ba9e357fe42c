"""The reference-side cache (almol_jax/eval/reference_cache.py): scoring with it, cold or warm,
gives exactly the numbers of the scorers without it, and a warm run computes no reference side.

Oracle: the same scorers with ``reference_cache=False`` (the path tests/test_eval_parity.py
checks against the MolT5 / L+M-24 reference implementations), on real MolT5 outputs for
ChEBI-20 plus edge rows (output = reference, unparsable and empty references).
"""

from __future__ import annotations

import math

import pytest

from almol_jax.eval import (
    EvalOptions,
    caption_scoring,
    molecule,
    read_predictions,
    reference_cache,
    score,
)
from almol_jax.eval.resources import CACHE_ENV

ROWS = 300  # >= MIN_ITEMS_FOR_POOL: the worker pool path


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, float) and math.isnan(x):
            assert isinstance(y, float) and math.isnan(y), key
        else:
            assert x == y, (key, x, y)


def _rows(shared_data, task: str):
    path = shared_data / "chebi-20-molt5-predictions" / f"molt5-small-{task}.txt"
    p = read_predictions(path, task)
    return list(p.sources[:ROWS]), list(p.references[:ROWS]), list(p.outputs[:ROWS])


def _entries(tmp_path):
    return sorted((tmp_path / reference_cache.SUBDIR).glob("*.json"))


def test_caption2smiles_cache_keeps_numbers(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    src, ref, out = _rows(shared_data, "caption2smiles")
    # edge rows: the output is the reference; a reference that does not parse; an empty one
    src += ["a", "b", "c"]
    ref += [ref[0], "C1CC(", ""]
    out += [ref[0], "CCO", "CCO"]
    base = dict(num_workers=2, fcd=False)
    plain = score(
        "caption2smiles", src, ref, out, options=EvalOptions(**base, reference_cache=False)
    )
    cold = score("caption2smiles", src, ref, out, options=EvalOptions(**base))
    assert len(_entries(tmp_path)) == 1
    # warm: no reference features are computed again (only the outputs' own strings are parsed)
    computed = []
    real = molecule.smiles_features
    monkeypatch.setattr(
        molecule, "smiles_features", lambda *a, **k: computed.append(a) or real(*a, **k)
    )
    warm = score("caption2smiles", src, ref, out, options=EvalOptions(**{**base, "num_workers": 1}))
    assert computed == []
    for got in (cold, warm):
        _same(plain[0], got[0])
        assert plain[1] == got[1]
    # another reference is another entry (keyed by content)
    score("caption2smiles", src, ["CCN", *ref[1:]], out, options=EvalOptions(**base))
    assert len(_entries(tmp_path)) == 2


def test_smiles2caption_cache_keeps_numbers(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    src, ref, out = _rows(shared_data, "smiles2caption")
    vocab = str(shared_data / "scibert_scivocab_uncased" / "vocab.txt")
    base = dict(num_workers=2, scibert_vocab=vocab)
    plain = score(
        "smiles2caption", src, ref, out, options=EvalOptions(**base, reference_cache=False)
    )
    cold = score("smiles2caption", src, ref, out, options=EvalOptions(**base))
    assert len(_entries(tmp_path)) == 1
    seen: list[list[str]] = []
    monkeypatch.setattr(
        caption_scoring, "reference_tokens",
        lambda *a, **k: seen.append(a[0]) or _real_tokens(*a, **k),
    )  # fmt: skip
    warm = score("smiles2caption", src, ref, out, options=EvalOptions(**{**base, "num_workers": 1}))
    assert seen == [ref]
    for got in (cold, warm):
        _same(plain[0], got[0])
        assert plain[1] == got[1]
    assert len(_entries(tmp_path)) == 1  # the same content: read, not written again


_real_tokens = caption_scoring.reference_tokens


def test_cache_key_depends_on_settings_and_content():
    key = reference_cache.reference_key
    assert key("c", ["a", "b"], {"r": 2}) == key("c", ["a", "b"], {"r": 2})
    assert key("c", ["a", "b"], {"r": 2}) != key("c", ["a", "b"], {"r": 3})
    assert key("c", ["a", "b"], {"r": 2}) != key("c", ["ab"], {"r": 2})
    assert key("c", ["a"], {}) != key("d", ["a"], {})


def test_damaged_entry_is_recomputed(tmp_path):
    calls = []

    def compute(distinct):
        calls.append(distinct)
        return {s: len(s) for s in distinct}

    args = ("k", ["xx", "y", "xx"], {})
    assert reference_cache.cached(*args, compute, directory=tmp_path) == {"xx": 2, "y": 1}
    assert calls == [["xx", "y"]]
    assert reference_cache.cached(*args, compute, directory=tmp_path) == {"xx": 2, "y": 1}
    assert len(calls) == 1
    (entry,) = tmp_path.glob("*.json")
    entry.write_text("{not json")
    assert reference_cache.cached(*args, compute, directory=tmp_path) == {"xx": 2, "y": 1}
    assert len(calls) == 2


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
