"""Reading data files: formats, column mapping, clear errors (file + line), counted drops."""

import json

import pytest

from almol_jax.config.sections import ColumnsSection, DataSection
from almol_jax.data.report import DataReport
from almol_jax.data.sources import load_examples, read_examples

COLS = ColumnsSection()


def write(path, text, mode="w"):
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def read(spec, fmt="auto", cols=COLS):
    report = DataReport()
    return read_examples(spec, fmt, cols, report, "train"), report


def test_preference_jsonl(tmp_path):
    rows = [
        {
            "source": "CCO",
            "chosen": "ethanol",
            "rejected": "methanol",
            "direction": "smiles2caption",
        },
        {"source": "ethanol", "chosen": "CCO", "rejected": "CO", "direction": "caption2smiles"},
    ]
    spec = write(tmp_path / "p.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    exs, report = read(spec)
    assert [(e.source, e.chosen, e.rejected, e.direction) for e in exs] == [
        ("CCO", "ethanol", "methanol", "smiles2caption"),
        ("ethanol", "CCO", "CO", "caption2smiles"),
    ]
    assert exs[1].origin == f"{spec}:2"
    assert report.files[0]["format"] == "preference"


def test_custom_column_names(tmp_path):
    spec = write(
        tmp_path / "p.jsonl",
        json.dumps({"x": "CCO", "good": "a", "bad": "b", "dir": "smiles2caption"}),
    )
    cols = ColumnsSection(source="x", chosen="good", rejected="bad", direction="dir")
    exs, _ = read(spec, "preference", cols)
    assert (exs[0].source, exs[0].chosen, exs[0].rejected) == ("CCO", "a", "b")


def test_scorer_tsv_read_without_quoting(tmp_path):
    text = 'SMILES\tground truth\toutput\nC"C"O\tThe "molecule" is\tA molecule\nCC\tgold\tout\n'
    exs, report = read(write(tmp_path / "s.txt", text))
    assert report.files[0]["format"] == "scorer_tsv"
    assert [(e.source, e.chosen, e.rejected, e.direction) for e in exs] == [
        ('C"C"O', 'The "molecule" is', "A molecule", "smiles2caption"),
        ("CC", "gold", "out", "smiles2caption"),
    ]
    exs, _ = read(
        write(tmp_path / "d.txt", "description\tground truth\toutput\nan acid\tCC(=O)O\tCC\n")
    )
    assert (exs[0].source, exs[0].direction) == ("an acid", "caption2smiles")


def test_pairs_expand_to_both_directions(tmp_path):
    exs, report = read(write(tmp_path / "p.tsv", "CID\tSMILES\tdescription\n1\tCCO\tethanol\n"))
    assert report.files[0]["format"] == "pairs"
    assert [(e.source, e.chosen, e.rejected, e.direction) for e in exs] == [
        ("CCO", "ethanol", None, "smiles2caption"),
        ("ethanol", "CCO", None, "caption2smiles"),
    ]


def test_real_scorer_file(shared_data):
    exs, report = read(
        str(shared_data / "chebi-20-molt5-predictions" / "molt5-small-caption2smiles.txt")
    )
    assert report.files[0]["format"] == "scorer_tsv"
    assert report.files[0]["rows"] == 3300
    assert len(exs) + sum(report.dropped["train"].values()) == 3300
    assert all(e.direction == "caption2smiles" for e in exs)


def test_chebi20_pairs(shared_data):
    exs, report = read(str(shared_data / "chebi-20" / "validation.txt"))
    assert report.files[0]["rows"] == 3301
    assert len(exs) == 2 * 3301 - sum(report.dropped["train"].values())


def test_non_utf8_line_names_file_and_line(tmp_path):
    good = json.dumps(
        {"source": "C", "chosen": "a", "rejected": "b", "direction": "smiles2caption"}
    )
    spec = write(tmp_path / "bad.jsonl", (good + "\n").encode() * 2 + b'{"source": "\xff"}\n', "wb")
    with pytest.raises(ValueError, match=r"bad.jsonl:3: not valid UTF-8"):
        read(spec)


def test_missing_column_names_file_and_columns(tmp_path):
    spec = write(
        tmp_path / "p.jsonl",
        json.dumps({"source": "C", "chosen": "a", "direction": "smiles2caption"}),
    )
    with pytest.raises(ValueError, match=r"p.jsonl.*lacks column\(s\) \['rejected'\]; it has"):
        read(spec, "preference")
    spec = write(tmp_path / "q.tsv", "CID\tSMILES\ttext2\n1\tC\tx\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['description'\]"):
        read(spec, "pairs")


def test_missing_field_in_a_later_row_names_the_line(tmp_path):
    good = {"source": "C", "chosen": "a", "rejected": "b", "direction": "smiles2caption"}
    spec = write(tmp_path / "p.jsonl", json.dumps(good) + "\n" + json.dumps({"source": "C"}) + "\n")
    with pytest.raises(ValueError, match=r"p.jsonl:2: missing field 'chosen'"):
        read(spec)


def test_bad_json_and_direction_and_field_count(tmp_path):
    with pytest.raises(ValueError, match=r"j.jsonl:1: invalid JSON"):
        read(write(tmp_path / "j.jsonl", "{nope\n"))
    row = {"source": "C", "chosen": "a", "rejected": "b", "direction": "s2c"}
    with pytest.raises(ValueError, match=r"d.jsonl:1: direction 's2c' is not one of"):
        read(write(tmp_path / "d.jsonl", json.dumps(row)))
    with pytest.raises(ValueError, match=r"t.tsv:3: 2 fields, the header has 3"):
        read(write(tmp_path / "t.tsv", "CID\tSMILES\tdescription\n1\tC\tx\n2\tC\n"))


def test_empty_responses_are_counted_drops(tmp_path):
    rows = [
        {"source": "C", "chosen": "a", "rejected": "b", "direction": "smiles2caption"},
        {"source": "C", "chosen": "  ", "rejected": "b", "direction": "smiles2caption"},
        {"source": "C", "chosen": "a", "rejected": "", "direction": "smiles2caption"},
        {"source": "", "chosen": "a", "rejected": "b", "direction": "smiles2caption"},
        {"source": "C", "chosen": None, "rejected": "b", "direction": "smiles2caption"},
    ]
    spec = write(tmp_path / "p.jsonl", "\n".join(json.dumps(r) for r in rows))
    exs, report = read(spec)
    assert len(exs) == 1
    assert report.dropped["train"] == {"empty_chosen": 2, "empty_rejected": 1, "empty_source": 1}
    assert report.drop_examples["train"]["empty_chosen"] == [f"{spec}:2", f"{spec}:5"]
    out = report.to_dict()["splits"]["train"]
    assert out["dropped"]["empty_chosen"] == 2
    # The scorer TSV: an empty model output is a counted drop too.
    exs, report = read(
        write(tmp_path / "s.txt", "SMILES\tground truth\toutput\nC\tgold\t\nCC\tg\to\n")
    )
    assert len(exs) == 1 and report.dropped["train"] == {"empty_rejected": 1}


def test_csv_and_parquet_through_datasets(tmp_path):
    import datasets

    rows = {"source": ["CCO", "CO"], "chosen": ["ethanol", "methanol"], "rejected": ["x", "y"],
            "direction": ["smiles2caption", "smiles2caption"]}  # fmt: skip
    ds = datasets.Dataset.from_dict(rows)
    ds.to_parquet(str(tmp_path / "p.parquet"))
    ds.to_csv(str(tmp_path / "p.csv"), index=False)
    for name in ("p.parquet", "p.csv"):
        exs, _ = read(str(tmp_path / name))
        assert [(e.source, e.chosen) for e in exs] == [("CCO", "ethanol"), ("CO", "methanol")], name


def test_load_examples_filters_directions_and_limits(tmp_path):
    spec = write(tmp_path / "p.tsv", "CID\tSMILES\tdescription\n1\tCCO\tethanol\n2\tCO\tmethanol\n")
    report = DataReport()
    d = DataSection(train_files=(spec,), directions=("caption2smiles",))
    assert [e.source for e in load_examples(d, "train", report)] == ["ethanol", "methanol"]
    d = DataSection(train_files=(spec,), max_examples=3)
    assert len(load_examples(d, "train", report)) == 3
    with pytest.raises(ValueError, match="does not exist"):
        load_examples(DataSection(train_files=(str(tmp_path / "none.jsonl"),)), "train", report)


def test_hub_dataset_code_path_on_a_local_folder(tmp_path):
    """hf:NAME[:SPLIT] goes through datasets.load_dataset; a local folder stands in for the hub."""
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    row = {"source": "CCO", "chosen": "ethanol", "rejected": "x", "direction": "smiles2caption"}
    (folder / "train.jsonl").write_text(json.dumps(row) + "\n")
    (folder / "validation.jsonl").write_text(json.dumps({**row, "chosen": "val"}) + "\n")
    exs, report = read(f"hf:{folder}:validation")
    assert [(e.source, e.chosen) for e in exs] == [("CCO", "val")]
    assert exs[0].origin == f"hf:{folder}:validation:row 1"
    exs, _ = read(f"hf:{folder}")  # split defaults to train
    assert exs[0].chosen == "ethanol"


def test_chebi20_escaped_backslashes_are_unescaped(tmp_path, shared_data):
    exs, _ = read(write(tmp_path / "p.tsv", "CID\tSMILES\tdescription\n1\tC/C=C\\\\C\tbutene\n"))
    assert exs[0].source == "C/C=C\\C" and exs[1].chosen == "C/C=C\\C"  # one backslash
    exs, _ = read(str(shared_data / "chebi-20" / "test.txt"))
    molecules = [e.source for e in exs if e.direction == "smiles2caption"]
    assert len(molecules) == 3300 and not any("\\\\" in m for m in molecules)
    assert sum("\\" in m for m in molecules) >= 484


def test_shipped_tiny_files_are_valid():
    """tests/data/tiny_prefs.jsonl: 64 triplets, 32 per direction, every SMILES parses (RDKit)."""
    from pathlib import Path

    from rdkit import Chem

    data = Path(__file__).resolve().parent / "data"
    exs, report = read(str(data / "tiny_prefs.jsonl"))
    assert len(exs) == 64 and not report.dropped
    assert sum(e.direction == "smiles2caption" for e in exs) == 32
    smiles = [e.source for e in exs if e.direction == "smiles2caption"]
    smiles += [s for e in exs if e.direction == "caption2smiles" for s in (e.chosen, e.rejected)]
    assert all(Chem.MolFromSmiles(s) is not None for s in smiles)
    assert all(e.chosen != e.rejected for e in exs)
    pairs, _ = read(str(data / "tiny_pairs.tsv"))
    assert len(pairs) == 64
