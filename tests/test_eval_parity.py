"""Parity with the community scorers on the real MolT5-large ChEBI-20 test outputs.

Golden numbers: MolT5's mol_translation_metrics.py / fingerprint_metrics.py /
text_translation_metrics.py / fcd_metric.py (fcd 1.1) run with RDKit 2026.9.1, nltk 3.10,
rouge-score 0.1.2 on /work/shared/data/chebi-20-molt5-predictions/molt5-large-*.txt.
"""

import pytest
from test_eval_text import wordnet_installed

from almol_jax.eval import EvalOptions, read_predictions, score

C2S_GOLDEN = {
    "bleu": 0.857921,
    "exact_match": 0.318182,
    "levenshtein": 15.957273,
    "validity": 0.958485,
    "maccs_fts": 0.889373,
    "rdk_fts": 0.807128,
    "morgan_fts": 0.749557,
}
S2C_GOLDEN = {
    "bleu2": 0.587693,
    "bleu4": 0.502264,
    "rouge1": 0.652891,
    "rouge2": 0.508429,
    "rougeL": 0.592880,
    "meteor": 0.614188,
}
FCD_GOLDEN = 0.382060


def _file(shared_data, task):
    return shared_data / "chebi-20-molt5-predictions" / f"molt5-large-{task}.txt"


@pytest.fixture(scope="module")
def c2s(shared_data):
    p = read_predictions(_file(shared_data, "caption2smiles"), "caption2smiles")
    return score(
        "caption2smiles", p.sources, p.references, p.outputs, options=EvalOptions(fcd=False)
    )


def test_caption2smiles_parity(c2s):
    metrics, per_row, resources = c2s
    assert metrics["n"] == len(per_row) == 3300
    for key, value in C2S_GOLDEN.items():
        assert abs(metrics[key] - value) <= 1e-6 + 5e-7, (key, metrics[key], value)
    assert resources.versions["rdkit"] == "2026.9.1"


def test_caption2smiles_lpm24_averaging_is_molt5_scaled_by_validity(c2s):
    metrics, per_row, _ = c2s
    # Every ChEBI-20 reference parses, so lpm24 = molt5 * (valid rows / all rows), exactly up to
    # float summation order.
    for key in ("maccs_fts", "rdk_fts", "morgan_fts"):
        scaled = metrics[f"{key}_molt5"] * metrics["validity"]
        assert abs(metrics[f"{key}_lpm24"] - scaled) < 1e-12, key
    assert 0.9 < metrics["uniqueness"] <= 1.0


@pytest.fixture(scope="module")
def s2c(shared_data):
    p = read_predictions(_file(shared_data, "smiles2caption"), "smiles2caption")
    options = EvalOptions(scibert_vocab=str(shared_data / "scibert_scivocab_uncased" / "vocab.txt"))
    if not wordnet_installed():  # checked independently of the resource finder under test
        pytest.skip("WordNet is not installed (run scripts/setup_test_env.sh)")
    return score("smiles2caption", p.sources, p.references, p.outputs, options=options)


def test_smiles2caption_parity(s2c):
    metrics, per_row, resources = s2c
    assert metrics["n"] == len(per_row) == 3300
    for key, value in S2C_GOLDEN.items():
        assert abs(metrics[key] - value) <= 1e-6 + 5e-7, (key, metrics[key], value)
    assert resources.wordnet_version == "3.0"
    assert len(resources.scibert_vocab_sha256) == 64


@pytest.mark.slow
def test_fcd_parity(shared_data):
    pytest.importorskip(
        "fcd_torch",
        reason="fcd_torch is a test-only dependency (requirements-dev.txt), not installed here",
    )
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    from almol_jax.eval.fcd import fcd_score

    def canonical(smiles):  # fcd 1.1's canonical_smiles: None where RDKit fails
        with BlockLogs():
            mol = Chem.MolFromSmiles(smiles)
        return Chem.MolToSmiles(mol) if mol is not None else None

    p = read_predictions(_file(shared_data, "caption2smiles"), "caption2smiles")
    refs = [canonical(s) for s in p.references]
    outs = [canonical(s) for s in p.outputs]
    assert abs(fcd_score(refs, outs) - FCD_GOLDEN) <= 1e-6 + 5e-7
