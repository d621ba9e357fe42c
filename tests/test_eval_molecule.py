"""caption2smiles metrics on hand-made rows, checked against RDKit's legacy scorer calls.

The reference scripts call ``Chem.RDKFingerprint``, ``MACCSkeys.GenMACCSKeys`` and
``AllChem.GetMorganFingerprint(m, 2)``; the evaluator uses fingerprint generators and a
per-string cache, so these tests recompute each similarity the reference way.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from almol_jax.eval import EvalOptions, score_caption2smiles
from almol_jax.eval.molecule import smiles_features, smiles_token_count

OPTS = EvalOptions(fcd=False, num_workers=1)


def _reference_fts(ref: str, out: str) -> tuple[float, float, float]:
    from rdkit import Chem, DataStructs
    from rdkit.Chem import AllChem, MACCSkeys

    a, b = Chem.MolFromSmiles(ref), Chem.MolFromSmiles(out)
    return (
        DataStructs.TanimotoSimilarity(MACCSkeys.GenMACCSKeys(a), MACCSkeys.GenMACCSKeys(b)),
        DataStructs.TanimotoSimilarity(Chem.RDKFingerprint(a), Chem.RDKFingerprint(b)),
        DataStructs.TanimotoSimilarity(
            AllChem.GetMorganFingerprint(a, 2), AllChem.GetMorganFingerprint(b, 2)
        ),
    )


ROWS = [  # (reference, output)
    ("CCO", "OCC"),  # same molecule, different string: exact by InChI
    ("c1ccccc1O", "c1ccccc1N"),
    ("CC(=O)O", "C1CC"),  # unclosed ring: invalid output
    ("CCN", ""),  # '' parses (empty molecule): valid, not exact
    ("CCCl", "CCCl.[Na+]"),  # salt
]


def test_small_set_against_reference_calls():
    metrics, rows = score_caption2smiles(
        None, [r for r, _ in ROWS], [o for _, o in ROWS], options=OPTS
    )
    assert [r["exact_match"] for r in rows] == [True, False, False, False, False]
    assert [r["valid"] for r in rows] == [True, True, False, True, True]
    assert metrics["validity"] == 4 / 5 and metrics["exact_match"] == 1 / 5
    expected = {}
    for i, (ref, out) in enumerate(ROWS):
        if rows[i]["valid"]:
            expected[i] = _reference_fts(ref, out)
            got = (rows[i]["maccs_fts"], rows[i]["rdk_fts"], rows[i]["morgan_fts"])
            np.testing.assert_allclose(got, expected[i], rtol=0, atol=1e-15)
        else:
            assert rows[i]["maccs_fts"] is None
    for k, key in enumerate(("maccs_fts", "rdk_fts", "morgan_fts")):
        vals = [e[k] for e in expected.values()]
        np.testing.assert_allclose(metrics[f"{key}_molt5"], np.mean(vals), rtol=0, atol=1e-15)
        np.testing.assert_allclose(metrics[f"{key}_lpm24"], sum(vals) / 5, rtol=0, atol=1e-15)
        assert metrics[key] == metrics[f"{key}_molt5"]
    import Levenshtein

    np.testing.assert_allclose(
        metrics["levenshtein"],
        np.mean([Levenshtein.distance(o, r) for r, o in ROWS]),
        rtol=0,
        atol=1e-12,
    )
    # uniqueness: 4 valid outputs, all distinct
    assert metrics["uniqueness"] == 1.0


# Rows whose output is the reference string: the fingerprints are compared with themselves, and
# the evaluator skips computing them where it can prove they are non-empty (Tanimoto 1.0).
SAME = ["CCO", "[H][H]", "C", "[Na+].[Cl-]", "*", "", "[2H]C", "c1ccccc1", "[57Fe]", "C" * 30]
SAME += ["N", "O=O", "*C*", "[H]N([H])[H]", "CC.[Na+]", "[Cl-]", "c1ccccc1[H]", "[HH]"]


def test_identical_rows_match_reference_calls():
    metrics, rows = score_caption2smiles(None, SAME, SAME, options=OPTS)
    for smiles, row in zip(SAME, rows, strict=True):
        assert row["valid"], smiles
        got = (row["maccs_fts"], row["rdk_fts"], row["morgan_fts"])
        assert got == _reference_fts(smiles, smiles), smiles  # 1.0, or 0.0 for empty ones
    assert [r["exact_match"] for r in rows] == [smiles_features(s).inchi != "" for s in SAME]
    assert {r["maccs_fts"] for r in rows} == {0.0, 1.0} and {r["rdk_fts"] for r in rows} == {
        0.0,
        1.0,
    }


def test_fingerprint_shortcuts_imply_bits(shared_data):
    from rdkit import Chem
    from rdkit.Chem import MACCSkeys
    from rdkit.rdBase import BlockLogs

    from almol_jax.eval.io import read_predictions
    from almol_jax.eval.molecule import _maccs_has_bits, _rdk_has_bits

    path = shared_data / "chebi-20-molt5-predictions" / "molt5-large-caption2smiles.txt"
    smiles = read_predictions(path, "caption2smiles").references[::3] + SAME
    with BlockLogs():
        mols = [m for m in map(Chem.MolFromSmiles, smiles) if m is not None]
    hits = 0
    for mol in mols:
        if _maccs_has_bits(mol):
            assert MACCSkeys.GenMACCSKeys(mol).GetNumOnBits() > 0, Chem.MolToSmiles(mol)
            hits += 1
        if _rdk_has_bits(mol):
            assert Chem.RDKFingerprint(mol).GetNumOnBits() > 0, Chem.MolToSmiles(mol)
            hits += 1
    assert hits > len(mols)  # the shortcuts apply to almost every molecule


def test_lpm24_averaging_selects_lpm24_values():
    opts = EvalOptions(fcd=False, num_workers=1, fingerprint_averaging="lpm24")
    metrics, _ = score_caption2smiles(None, ["CCO", "CCO"], ["CCO", "C1C"], options=opts)
    assert metrics["morgan_fts"] == metrics["morgan_fts_lpm24"] == 0.5
    assert metrics["morgan_fts_molt5"] == 1.0


def test_star_has_no_inchi_and_is_not_an_exact_match():
    feats = smiles_features("*")
    assert feats.valid and feats.inchi == ""
    _, rows = score_caption2smiles(None, ["*"], ["*"], options=OPTS)
    assert rows[0]["valid"] and not rows[0]["exact_match"]


def test_bad_options_name_the_value():
    with pytest.raises(ValueError, match="fingerprint_averaging='mean'"):
        EvalOptions(fingerprint_averaging="mean")
    with pytest.raises(ValueError, match="lengths differ"):
        score_caption2smiles(None, ["C"], [], options=OPTS)


def test_smiles_token_count():
    assert smiles_token_count("CC(=O)[O-]") == 7  # C C ( = O ) [O-]
    assert smiles_token_count("ClC%12Br") == 4
    assert smiles_token_count("") == 0


def test_empty_input_gives_nan_not_crash():
    metrics, rows = score_caption2smiles([], [], [], options=OPTS)
    assert rows == [] and metrics["n"] == 0 and math.isnan(metrics["bleu"])


exotic = st.sampled_from(
    [
        "",
        " ",
        "*",
        "[]",
        "C1CC",
        "CC.[Na+].[Cl-]",
        "C" * 400,
        "c1ccccc1" * 30,
        "é",
        "[Zz]",
        "\t",
        "C@@",
        "[2H]C",
    ]
)
smiles_like = st.one_of(
    exotic, st.text(alphabet="CNOSPclnos()=#[]@+-1234.%*\\/", max_size=40), st.text(max_size=20)
)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(smiles_like, smiles_like), min_size=1, max_size=6))
def test_random_and_exotic_smiles_never_crash(pairs):
    refs, outs = [p[0] for p in pairs], [p[1] for p in pairs]
    metrics, rows = score_caption2smiles(None, refs, outs, options=OPTS)
    n = len(pairs)
    assert metrics["n"] == n and len(rows) == n
    assert (
        0.0 <= metrics["validity"] <= 1.0 and 0.0 <= metrics["exact_match"] <= metrics["validity"]
    )
    assert metrics["levenshtein"] >= 0 and 0.0 <= metrics["bleu"] <= 1.0
    any_valid = any(r["valid"] for r in rows)
    for key in ("maccs_fts", "rdk_fts", "morgan_fts"):
        # NaN only where undefined: molt5 averaging with no valid row.
        assert math.isnan(metrics[f"{key}_molt5"]) == (not any_valid)
        assert 0.0 <= metrics[f"{key}_lpm24"] <= 1.0
    assert 0.0 <= metrics["chrf"] <= 100.0


def test_forkserver_workers_give_the_serial_numbers():
    # The start method used when JAX is loaded (pickled state, fresh interpreters).
    refs = [r for r, _ in ROWS] * 60
    outs = [o for _, o in ROWS] * 60
    serial, _ = score_caption2smiles(None, refs, outs, options=OPTS)
    opts = EvalOptions(fcd=False, num_workers=2, start_method="forkserver")
    pooled, _ = score_caption2smiles(None, refs, outs, options=opts)
    for key, value in serial.items():
        assert value == pooled[key] or (math.isnan(value) and math.isnan(pooled[key])), key
