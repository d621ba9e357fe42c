"""Prediction-file reading (TSV / CSV / JSONL, errors naming lines) and resource lookup."""

import json
import os

import pytest

from almol_jax.eval import resources as res
from almol_jax.eval.io import PredictionFileError, Predictions, read_predictions, write_tsv


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_tsv_round_trip_keeps_quotes_and_backslashes(tmp_path):
    preds = Predictions(['a "quoted" caption', "b"], ["C/C=C\\C", "CC"], ['"C', ""])
    path = tmp_path / "p.tsv"
    write_tsv(path, "caption2smiles", preds)
    got = read_predictions(path, "caption2smiles")
    assert (got.sources, got.references, got.outputs) == (
        preds.sources,
        preds.references,
        preds.outputs,
    )
    assert path.read_text().splitlines()[0] == "description\tground truth\toutput"


def test_bom_and_crlf_are_tolerated(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffSMILES\tground truth\toutput\r\nC\tan acid\ta base\r\n".encode())
    got = read_predictions(path, "smiles2caption")
    assert (got.sources, got.references, got.outputs) == (["C"], ["an acid"], ["a base"])


def test_ragged_row_names_the_line(tmp_path):
    path = _write(tmp_path / "p.txt", "SMILES\tground truth\toutput\nC\ta\tb\nCC\tonly two\n")
    with pytest.raises(PredictionFileError, match=r"p\.txt:3: 2 fields"):
        read_predictions(path, "smiles2caption")
    path = _write(tmp_path / "q.txt", "SMILES\tground truth\toutput\nC\ta\tb\textra\n")
    with pytest.raises(PredictionFileError, match=r"q\.txt:2: 4 fields"):
        read_predictions(path)


def test_missing_column_and_wrong_task_are_clear(tmp_path):
    path = _write(tmp_path / "p.txt", "SMILES\tground truth\nC\ta\n")
    with pytest.raises(PredictionFileError, match="no output column"):
        read_predictions(path)
    path = _write(tmp_path / "s.txt", "SMILES\tground truth\toutput\nC\ta\tb\n")
    with pytest.raises(PredictionFileError, match="smiles2caption layout"):
        read_predictions(path, "caption2smiles")
    with pytest.raises(PredictionFileError, match="empty file"):
        read_predictions(_write(tmp_path / "e.txt", ""))
    with pytest.raises(ValueError, match="task='captioning'"):
        read_predictions(path, "captioning")


def test_csv_and_jsonl(tmp_path):
    path = _write(tmp_path / "p.csv", 'source,reference,output\n"a, b",CCO,"C""C"\n')
    got = read_predictions(path)
    assert (got.sources, got.references, got.outputs) == (["a, b"], ["CCO"], ['C"C'])
    rows = [
        {"source": "x", "reference": "CCO", "output": "CC"},
        {"source": "y", "reference": "N", "output": None},
    ]
    path = _write(tmp_path / "p.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    got = read_predictions(path)
    assert got.outputs == ["CC", ""] and got.format == "jsonl"
    path = _write(tmp_path / "bad.jsonl", json.dumps(rows[0]) + "\n{not json\n")
    with pytest.raises(PredictionFileError, match=r"bad\.jsonl:2"):
        read_predictions(path)
    path = _write(tmp_path / "nokey.jsonl", json.dumps({"source": "x", "output": "y"}) + "\n")
    with pytest.raises(PredictionFileError, match=r"nokey\.jsonl:1: no key"):
        read_predictions(path)


def test_lexnames_is_the_standard_45_line_file():
    lines = res.lexnames_text().splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3"
    assert lines[3] == "03\tnoun.Tops\t1"
    assert lines[29] == "29\tverb.body\t2"
    assert lines[44] == "44\tadj.ppl\t3"
    assert all(line.split("\t")[0] == f"{i:02d}" for i, line in enumerate(lines))


def test_layout_wordnet_writes_lexnames_and_names_missing_files(tmp_path):
    src = tmp_path / "dict"
    src.mkdir()
    for name in res.WORDNET_FILES:
        (src / name).write_text(f"{name}\n")
    root = res.layout_wordnet(src, tmp_path / "cache")
    wn = root / "corpora" / "wordnet"
    assert (wn / "lexnames").read_text() == res.lexnames_text()
    assert (wn / "data.noun").read_text() == "data.noun\n" and not (wn / "data.noun").is_symlink()
    assert res.layout_wordnet(src, tmp_path / "cache") == root  # idempotent
    os.remove(src / "index.sense")
    with pytest.raises(
        res.MissingResourceError,
        match="index.sense.*apt-get install -y wordnet-base wordnet-sense-index",
    ):
        res.layout_wordnet(src, tmp_path / "cache2")


def test_scibert_vocab_lookup_order(tmp_path, monkeypatch):
    with pytest.raises(
        res.MissingResourceError, match="hf download allenai/scibert_scivocab_uncased"
    ):
        res.find_scibert_vocab(tmp_path / "nope" / "vocab.txt")
    vocab = _write(tmp_path / "vocab.txt", "[PAD]\n[UNK]\n")
    monkeypatch.setenv(res.SCIBERT_ENV, str(tmp_path))
    assert res.find_scibert_vocab() == vocab
    other = tmp_path / "explicit"
    other.mkdir()
    explicit = _write(other / "vocab.txt", "[UNK]\n")
    assert res.find_scibert_vocab(other) == explicit  # explicit beats the environment


def test_wordnet_explicit_missing_path_says_how_to_get_it(tmp_path):
    with pytest.raises(res.MissingResourceError, match="WordNet.*apt-get install"):
        res.find_wordnet(tmp_path / "nowhere")


def test_versions_recorded():
    versions = res.package_versions()
    for name in ("rdkit", "nltk", "rouge-score", "sacrebleu"):
        assert versions[name], name


def test_nltk_data_path_without_importing_nltk_equals_nltks(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "NLTK_DATA": f"{tmp_path}/a{os.pathsep}~/b{os.pathsep}"}
    ours = (
        "import json, sys; from almol_jax.eval.resources import nltk_data_path; "
        "p = nltk_data_path(); assert 'nltk' not in sys.modules; print(json.dumps(p))"
    )
    theirs = "import json, nltk; print(json.dumps(nltk.data.path))"
    got = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", code],
                env=env,
                check=True,
                capture_output=True,
                text=True,
                cwd=res.REPO_ROOT,
            ).stdout
        )
        for code in (ours, theirs)
    ]
    assert got[0] == got[1] and got[0][0] == f"{tmp_path}/a"
