"""eval.py prediction-file mode end to end, the report files, FCD edge cases and the
Hugging Face ``evaluate`` module loaded offline from its local directory."""

import csv
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import eval as eval_cli  # noqa: E402  (the repo-root entry point)

C2S_ROWS = [
    ("The molecule is ethanol.", "CCO", "OCC"),
    ("The molecule is phenol.", "c1ccccc1O", "c1ccccc1N"),
    ("The molecule is acetic acid.", "CC(=O)O", "C1CC"),
    ("The molecule is ethylamine.", "CCN", ""),
]


def _tsv(path, header, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(row) + "\n")
    return path


def test_caption2smiles_cli_writes_report(tmp_path, capsys):
    pred = _tsv(tmp_path / "p.txt", ("description", "ground truth", "output"), C2S_ROWS)
    out = tmp_path / "report"
    rc = eval_cli.main(
        [
            "--task",
            "caption2smiles",
            "--predictions",
            str(pred),
            "--output-dir",
            str(out),
            "--no-fcd",
            "--num-workers",
            "1",
            "--fingerprint-averaging",
            "lpm24",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Exact match (InChI)" in printed and "4 rows" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "bleu",
        "exact_match",
        "levenshtein",
        "validity",
        "maccs_fts",
        "rdk_fts",
        "morgan_fts",
        "fcd",
        "chrf",
        "uniqueness",
        "length_chars_diff_mean",
    ):
        assert key in metrics, key
    assert metrics["exact_match"] == 0.25 and metrics["validity"] == 0.75
    assert metrics["morgan_fts"] == metrics["morgan_fts_lpm24"]
    assert metrics["fcd"] is None and "fcd" in metrics["resources"]["skipped"]
    assert metrics["resources"]["versions"]["rdkit"]
    assert metrics["resources"]["settings"]["chrf"].startswith("chrF (sacrebleu")
    assert metrics["resources"]["wordnet_source"]  # recorded even though unused here
    with open(out / "per_row.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and rows[0]["exact_match"] == "True" and rows[2]["maccs_fts"] == ""
    assert (out / "score_vs_length.png").stat().st_size > 1000
    assert (out / "similarity_hist.png").stat().st_size > 1000
    assert "rdkit" in (out / "metrics.md").read_text()


def test_cli_bad_file_is_a_clear_error(tmp_path, capsys):
    pred = tmp_path / "bad.txt"
    pred.write_text("description\tground truth\toutput\na\tCCO\n")
    rc = eval_cli.main(["--task", "caption2smiles", "--predictions", str(pred), "--no-fcd"])
    assert rc == 2
    assert "bad.txt:2: 2 fields" in capsys.readouterr().err


def test_smiles2caption_cli(tmp_path, shared_data):
    rows = [
        ("CCO", "The molecule is an alcohol.", "[CLS] The molecule is an alcohol."),
        ("CCN", "The molecule is an amine.", "The molecule is a base."),
    ]
    pred = _tsv(tmp_path / "p.txt", ("SMILES", "ground truth", "output"), rows)
    out = tmp_path / "r"
    rc = eval_cli.main(
        [
            "--task",
            "smiles2caption",
            "--predictions",
            str(pred),
            "--output-dir",
            str(out),
            "--num-workers",
            "1",
            "--scibert-vocab",
            str(shared_data / "scibert_scivocab_uncased"),
            "--skip-unavailable",
        ]
    )
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rouge1"] == pytest.approx((1.0 + 0.6) / 2, abs=1e-12)  # [CLS] prefix stripped
    assert metrics["resources"]["scibert_vocab_sha256"]
    for key in ("bleu2", "bleu4", "rouge2", "rougeL", "meteor", "chrf"):
        assert key in metrics


def test_fcd_is_nan_on_too_few_molecules():
    pytest.importorskip(
        "fcd_torch",
        reason="fcd_torch is a test-only dependency (requirements-dev.txt), not installed here",
    )
    from almol_jax.eval.fcd import fcd_score

    assert math.isnan(fcd_score(["CCO"], ["CCO"]))
    assert math.isnan(fcd_score([None, ""], ["CCO", "CCN"]))


def test_hf_evaluate_module_offline(monkeypatch):
    evaluate = pytest.importorskip(
        "evaluate",
        reason="evaluate is a test-only dependency (requirements-dev.txt), not installed here",
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    from almol_jax.eval import EvalOptions, score

    metric = evaluate.load(str(REPO / "almol_jax" / "eval" / "hf_evaluate"), "caption2smiles")
    refs = [r[1] for r in C2S_ROWS]
    outs = [r[2] for r in C2S_ROWS]
    got = metric.compute(predictions=outs, references=refs, fcd=False, num_workers=1)
    want, _, _ = score(
        "caption2smiles", None, refs, outs, options=EvalOptions(fcd=False, num_workers=1)
    )
    for key in ("bleu", "exact_match", "levenshtein", "validity", "maccs_fts", "chrf"):
        assert got[key] == want[key], key
    assert got["fcd"] is None
