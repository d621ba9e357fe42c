"""Tests of the preference builders' shared pieces (common.py) and of building triplets from
prediction files (from_predictions.py), including golden counts on the real MolT5-large outputs
that this test recomputes independently with RDKit.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem, DataStructs, RDLogger
from rdkit.Chem import AllChem

from almol_jax.preferences import common
from almol_jax.preferences.__main__ import main as cli_main
from almol_jax.preferences.common import PreferenceRow
from almol_jax.preferences.from_predictions import (
    build_from_predictions,
    read_gold_pairs,
    read_prediction_file,
)

S2C_HEADER = "SMILES\tground truth\toutput"
C2S_HEADER = "description\tground truth\toutput"


def write_tsv(path: Path, header: str, rows: list[tuple[str, ...]]) -> Path:
    path.write_text("\n".join([header] + ["\t".join(r) for r in rows]) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def toy_files(tmp_path):
    """Two directions over four gold pairs, with one drop of each kind."""
    s2c = write_tsv(
        tmp_path / "toy-smiles2caption.txt",
        S2C_HEADER,
        [
            ("CCO", "The molecule is ethanol.", "The molecule is methanol."),  # kept
            (
                "CC(=O)O",
                "The molecule is acetic acid.",
                "  the molecule IS   acetic acid. ",
            ),  # equivalent text
            ("c1ccccc1", "The molecule is benzene.", "   "),  # empty
            ("CCO", "The molecule is ethanol.", "The molecule is methanol."),  # duplicate
        ],
    )
    c2s = write_tsv(
        tmp_path / "toy-caption2smiles.txt",
        C2S_HEADER,
        [
            ("The molecule is ethanol.", "CCO", "OCC"),  # same InChI: equivalent
            ("The molecule is acetic acid.", "CC(=O)O", "CC(=O)OC"),  # kept
            (
                "The molecule is benzene.",
                "c1ccccc1",
                "c1ccccc1(",
            ),  # invalid SMILES: kept, score None
            ("The molecule is propane.", "CCC", ""),  # empty (pair only in this file)
        ],
    )
    return s2c, c2s


def test_toy_build_counts_and_rows(toy_files):
    rows, summary = build_from_predictions(toy_files, system="toy")
    per = summary["per_direction"]
    assert [
        per["smiles2caption"][k]
        for k in ("input", "empty_rejected", "equivalent", "duplicates", "kept")
    ] == [4, 1, 1, 1, 1]
    assert [
        per["caption2smiles"][k]
        for k in ("input", "empty_rejected", "equivalent", "duplicates", "kept")
    ] == [4, 1, 1, 0, 2]
    assert summary["total"]["kept"] == len(rows) == 3
    assert summary["pairs"] == {"distinct": 4, "not_in_gold": 0, "sampled": 4}
    by_dir = {(r.direction, r.source): r for r in rows}
    ethanol = by_dir[("smiles2caption", "CCO")]
    assert (ethanol.chosen, ethanol.rejected, ethanol.source_system) == (
        "The molecule is ethanol.",
        "The molecule is methanol.",
        "toy",
    )
    assert ethanol.score_name == "sentence_bleu" and 0.0 < ethanol.score < 1.0
    acetic = by_dir[("caption2smiles", "The molecule is acetic acid.")]
    assert (acetic.chosen, acetic.rejected, acetic.score_name) == (
        "CC(=O)O",
        "CC(=O)OC",
        "morgan_fts",
    )
    ref = AllChem.GetMorganFingerprint(
        Chem.MolFromSmiles("CC(=O)O"), 2
    )  # legacy count API: independent path
    out = AllChem.GetMorganFingerprint(Chem.MolFromSmiles("CC(=O)OC"), 2)
    np.testing.assert_allclose(
        acetic.score, DataStructs.TanimotoSimilarity(ref, out), rtol=0, atol=1e-6
    )
    assert by_dir[("caption2smiles", "The molecule is benzene.")].score is None


def test_gold_restricts_pairs(toy_files, tmp_path):
    gold = tmp_path / "gold.txt"
    # ChEBI-20 layout, with one SMILES written in its escaped form
    gold.write_text(
        "CID\tSMILES\tdescription\n1\tCCO\tThe molecule is ethanol.\n2\tCC(=O)O\tThe molecule is acetic acid.\n"
    )
    rows, summary = build_from_predictions(toy_files, system="toy", gold_files=[gold])
    assert summary["pairs"] == {"distinct": 4, "not_in_gold": 2, "sampled": 2}
    assert {r.chosen for r in rows} <= {
        "CCO",
        "CC(=O)O",
        "The molecule is ethanol.",
        "The molecule is acetic acid.",
    }
    escaped = tmp_path / "escaped.txt"
    escaped.write_text("CID\tSMILES\tdescription\n1\tF/C=C\\\\F\tThe molecule is x.\n")
    assert read_gold_pairs(escaped) == {("F/C=C\\F", "The molecule is x.")}


def test_subsample_is_seeded_and_keeps_both_directions(tmp_path):
    n = 200
    s2c = write_tsv(
        tmp_path / "a.txt",
        S2C_HEADER,
        [(f"C{'C' * i}O", f"caption {i}", f"other {i}") for i in range(n)],
    )
    c2s = write_tsv(
        tmp_path / "b.txt", C2S_HEADER, [(f"caption {i}", f"C{'C' * i}O", "N") for i in range(n)]
    )
    rows_a, sum_a = build_from_predictions(
        [s2c, c2s], system="x", fraction=0.1, seed=0, score=False
    )
    rows_b, _ = build_from_predictions([c2s, s2c], system="x", fraction=0.1, seed=0, score=False)
    rows_c, _ = build_from_predictions([s2c, c2s], system="x", fraction=0.1, seed=1, score=False)
    assert sum_a["pairs"]["sampled"] == 20 and len(rows_a) == 40
    assert sorted(map(repr, rows_a)) == sorted(
        map(repr, rows_b)
    )  # file order does not change the sample
    assert {r.source for r in rows_a} != {r.source for r in rows_c}
    s2c_pairs = {(r.source, r.chosen) for r in rows_a if r.direction == "smiles2caption"}
    c2s_pairs = {(r.chosen, r.source) for r in rows_a if r.direction == "caption2smiles"}
    assert s2c_pairs == c2s_pairs
    assert common.subsample(range(10), 0.5, seed=3) == common.subsample(
        reversed(range(10)), 0.5, seed=3
    )
    with pytest.raises(ValueError, match="fraction=0"):
        common.subsample(range(10), 0, seed=0)


def test_equivalence_rules():
    assert common.equivalent("OCC", "CCO", "caption2smiles")
    assert not common.equivalent(
        "C[C@H](N)C(=O)O", "C[C@@H](N)C(=O)O", "caption2smiles"
    )  # enantiomers differ
    assert not common.equivalent("CCO", "xx(", "caption2smiles")
    assert common.equivalent("xx(", " xx( ", "caption2smiles")  # neither parses: stripped strings
    assert common.equivalent("The  Molecule\nis X.", "the molecule is x.", "smiles2caption")
    assert not common.equivalent("The molecule is X.", "The molecule is X", "smiles2caption")
    with pytest.raises(ValueError, match="direction='sideways'"):
        common.equivalent("a", "b", "sideways")


def test_write_rows_round_trips_jsonl_and_csv(tmp_path):
    rows = [
        PreferenceRow(
            "CCO",
            'cap, with "quotes"',
            "other\tcap",
            "smiles2caption",
            "sys",
            0.25,
            "sentence_bleu",
        ),
        PreferenceRow("cap", "CCO", "CCN", "caption2smiles", "sys", None, "morgan_fts"),
    ]
    jl = common.write_rows(rows, tmp_path / "o.jsonl")
    assert [json.loads(line) for line in jl.read_text().splitlines()] == [r.to_dict() for r in rows]
    cs = common.write_rows(rows, tmp_path / "o.csv")
    with open(cs, newline="") as f:
        back = list(csv.DictReader(f))
    assert [b["chosen"] for b in back] == [r.chosen for r in rows]
    assert [b["rejected"] for b in back] == [r.rejected for r in rows]
    assert [b["score"] for b in back] == ["0.25", ""]
    with pytest.raises(ValueError, match="o.txt"):
        common.write_rows(rows, tmp_path / "o.txt")


def test_read_errors_name_the_problem(tmp_path):
    bad = write_tsv(tmp_path / "bad.txt", "smiles\tgold\tout", [("a", "b", "c")])
    with pytest.raises(ValueError, match="smiles"):
        read_prediction_file(bad)
    extra = write_tsv(tmp_path / "extra.txt", S2C_HEADER, [("a", "b", "c", "d")])
    with pytest.raises(ValueError, match="extra.txt:2: 4 fields"):
        read_prediction_file(extra)
    # One policy for ragged rows in every reader (data/files.py): a row without its output
    # field is an error naming file:line, never padded.
    short = write_tsv(tmp_path / "short.txt", S2C_HEADER, [("CCO", "cap")])
    with pytest.raises(ValueError, match="short.txt:2: 2 fields"):
        read_prediction_file(short)


def test_cli_writes_rows_and_summary(toy_files, tmp_path, capsys):
    out = tmp_path / "out" / "prefs.jsonl"
    rc = cli_main(
        [
            "from-predictions",
            "--predictions",
            ",".join(map(str, toy_files)),
            "--system",
            "toy",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(r["source_system"] == "toy" for r in rows)
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["total"]["kept"] == 3 and summary["output"] == str(out)
    printed = capsys.readouterr().out
    assert "smiles2caption" in printed and "equivalent" in printed
    with pytest.raises(SystemExit) as exc:
        cli_main(["from-predictions", "--help"])
    assert exc.value.code == 0


# ---- real data: MolT5-large on ChEBI-20 test, both directions ------------------------------------


def independent_counts(pred_dir: Path, pairs: set | None = None) -> dict[str, dict[str, int]]:
    """Rows, empty outputs and gold-equivalent outputs per direction, computed here from the raw files."""
    RDLogger.DisableLog("rdApp.*")

    def inchi(s):
        m = Chem.MolFromSmiles(s)
        return Chem.MolToInchi(m) if m is not None and m.GetNumAtoms() else None

    out = {}
    for direction in ("smiles2caption", "caption2smiles"):
        lines = (
            (pred_dir / f"molt5-large-{direction}.txt").read_text(encoding="utf-8").splitlines()[1:]
        )
        n = empty = same = 0
        for line in lines:
            src, gold, pred = line.split("\t")
            key = (src, gold) if direction == "smiles2caption" else (gold, src)
            if pairs is not None and key not in pairs:
                continue
            n += 1
            if not pred.strip():
                empty += 1
            elif direction == "smiles2caption":
                same += " ".join(pred.lower().split()) == " ".join(gold.lower().split())
            else:
                same += inchi(pred) is not None and inchi(pred) == inchi(gold)
        out[direction] = {
            "input": n,
            "empty_rejected": empty,
            "equivalent": same,
            "kept": n - empty - same,
        }
    RDLogger.EnableLog("rdApp.*")
    return out


@pytest.fixture(scope="module")
def molt5_files(shared_data):
    d = shared_data / "chebi-20-molt5-predictions"
    return [d / "molt5-large-smiles2caption.txt", d / "molt5-large-caption2smiles.txt"]


def test_molt5_large_full_golden_counts(molt5_files, shared_data):
    rows, summary = build_from_predictions(
        molt5_files,
        system="molt5-large",
        gold_files=[shared_data / "chebi-20" / "test.txt"],
        score=False,
    )
    expected = independent_counts(molt5_files[0].parent)
    assert summary["pairs"] == {"distinct": 3300, "not_in_gold": 0, "sampled": 3300}
    for direction, exp in expected.items():
        got = summary["per_direction"][direction]
        assert {k: got[k] for k in exp} == exp, direction
        assert got["duplicates"] == 0
    # the recorded golden numbers (RDKit 2026.09.1): 1,050 exact InChI matches, 103 identical captions
    assert expected["caption2smiles"]["equivalent"] == 1050
    assert expected["smiles2caption"]["equivalent"] == 103
    assert len(rows) == 5447 and all(r.source_system == "molt5-large" for r in rows)


def test_molt5_large_ten_percent(molt5_files):
    rows, summary = build_from_predictions(molt5_files, system="molt5-large", fraction=0.1, seed=0)
    assert summary["pairs"]["sampled"] == 330
    sampled_pairs = {(r.source, r.chosen) for r in rows if r.direction == "smiles2caption"}
    sampled_pairs |= {(r.chosen, r.source) for r in rows if r.direction == "caption2smiles"}
    # the same 10% drawn here from the raw files' pairs; every kept row belongs to it
    all_pairs = {r.pair for f in molt5_files for r in read_prediction_file(f)[1]}
    chosen_pairs = common.subsample(all_pairs, 0.1, seed=0)
    assert len(all_pairs) == 3300 and len(chosen_pairs) == 330
    assert sampled_pairs <= chosen_pairs
    expected = independent_counts(molt5_files[0].parent, chosen_pairs)
    for direction, exp in expected.items():
        got = summary["per_direction"][direction]
        assert {k: got[k] for k in exp} == exp, direction
    assert summary["total"]["input"] == 660
    assert all(
        r.score_name == "sentence_bleu" and 0 <= r.score <= 1
        for r in rows
        if r.direction == "smiles2caption"
    )
    # provenance score: Morgan FTS of the rejected vs gold, recomputed with RDKit's legacy count API
    c2s = [r for r in rows if r.direction == "caption2smiles"]
    for r in c2s:
        ref, out = Chem.MolFromSmiles(r.chosen), Chem.MolFromSmiles(r.rejected)
        if out is None:
            assert r.score is None
        else:
            fts = DataStructs.TanimotoSimilarity(
                AllChem.GetMorganFingerprint(ref, 2), AllChem.GetMorganFingerprint(out, 2)
            )
            np.testing.assert_allclose(r.score, fts, rtol=0, atol=1e-6)
