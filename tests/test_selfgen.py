"""Self-generated preferences: the rejection policies on handmade candidates, the metrics, and
an end-to-end build from a tiny model (sampled candidates, near-miss rejections, summary, files).
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from almol_jax.preferences.common import equivalent
from almol_jax.preferences.self_generated import (
    build_self_generated,
    metric_fn,
    pick_rejected,
)

MORGAN = metric_fn("caption2smiles", "morgan_fts")
BLEU = metric_fn("smiles2caption", "bleu")


def test_near_miss_skips_equivalent_candidates_and_takes_the_closest():
    gold = "CCCCO"  # butanol
    candidates = ["OCCCC", "CCCCC", "CCCO", "C1CCCC1", "", "CCCO"]
    pick = pick_rejected(gold, candidates, "caption2smiles", policy="near_miss", score=MORGAN)
    # "OCCCC" is butanol written differently (same InChI): never the rejected.
    assert equivalent(gold, "OCCCC", "caption2smiles")
    scores = {c: MORGAN(gold, c) for c in ("CCCCC", "CCCO", "C1CCCC1")}
    assert pick.rejected == max(scores, key=scores.get)
    assert pick.score == pytest.approx(scores[pick.rejected], abs=1e-6)
    assert pick.score < MORGAN(gold, gold) == 1.0
    assert (pick.candidates, pick.distinct, pick.equivalent, pick.empty) == (6, 5, 1, 1)


def test_worst_policy_and_nothing_qualifies():
    gold = "The molecule is an alcohol."
    candidates = ["The molecule is an alcohol .", "The molecule is a ketone.", "Water."]
    worst = pick_rejected(gold, candidates, "smiles2caption", policy="worst", score=BLEU)
    assert worst.rejected == "Water."
    assert worst.score == pytest.approx(BLEU(gold, "Water."), abs=1e-6)
    # Every candidate equivalent to the gold: the first is kept, so filter_rows drops it.
    same = pick_rejected(
        gold, ["the molecule is  an alcohol."], "smiles2caption", policy="near_miss", score=BLEU
    )
    assert same.rejected == "the molecule is  an alcohol." and same.equivalent == 1
    with pytest.raises(ValueError, match="policy"):
        pick_rejected(gold, candidates, "smiles2caption", policy="best", score=BLEU)


def test_metrics_golden_values():
    assert metric_fn("caption2smiles", "exact")("CCO", "OCC") == 1.0
    assert metric_fn("caption2smiles", "exact")("CCO", "CCN") == 0.0
    assert metric_fn("caption2smiles", "levenshtein")("CCO", "CCN") == pytest.approx(
        2 / 3, abs=1e-12
    )
    assert MORGAN("CCO", "not a smiles") == 0.0
    assert metric_fn("smiles2caption", "chrf")("an alcohol", "an alcohol") == pytest.approx(
        1.0, abs=1e-9
    )
    with pytest.raises(ValueError, match="not available"):
        metric_fn("caption2smiles", "meteor")


def test_self_generated_end_to_end_on_a_tiny_model(tmp_path):
    from flax import nnx

    from almol_jax.config.sections import TemplatesSection
    from almol_jax.data.tokenizer import byte_tokenizer
    from almol_jax.generation import DecodeSettings
    from almol_jax.model import LlamaForCausalLM, ModelConfig
    from almol_jax.preferences.common import write_rows

    config = ModelConfig.preset(
        "tiny", vocab_size=260, bos_token_id=1, eos_token_id=2, pad_token_id=3
    )
    model = LlamaForCausalLM(config, rngs=nnx.Rngs(0))
    tokenizer = byte_tokenizer()
    templates = TemplatesSection(smiles2caption="M: {source}\nC:", caption2smiles="C: {source}\nS:")
    examples = [
        ("CCO", "An alcohol.", "smiles2caption"),
        ("An alcohol.", "CCO", "caption2smiles"),
        ("CC(=O)O", "An acid.", "smiles2caption"),
        ("An acid.", "CC(=O)O", "caption2smiles"),
    ]
    settings = DecodeSettings(
        method="sample", temperature=1.0, max_new_tokens=12, batch_size=4, prompt_buckets=(32,)
    )
    kwargs = dict(templates=templates, settings=settings, num_candidates=3, policy="near_miss")
    rows, summary = build_self_generated(
        model, tokenizer, examples, key=jax.random.key(0), **kwargs
    )
    again, _ = build_self_generated(model, tokenizer, examples, key=jax.random.key(0), **kwargs)
    assert [r.rejected for r in rows] == [r.rejected for r in again]  # seeded: reproducible
    assert len(rows) >= 2
    for row in rows:
        scorer = MORGAN if row.direction == "caption2smiles" else BLEU
        gold_score = scorer(row.chosen, row.chosen)
        assert row.score is not None and row.score < gold_score
        assert row.score == pytest.approx(scorer(row.chosen, row.rejected), abs=1e-6)
        assert not equivalent(row.chosen, row.rejected, row.direction)
        assert row.score_name == ("morgan_fts" if row.direction == "caption2smiles" else "bleu")
    assert summary["builder"] == "self_generated" and summary["num_candidates"] == 3
    total = summary["total"]
    assert total["input"] == 4 and total["kept"] == len(rows)
    assert sum(summary["candidates"][d]["candidates"] for d in summary["candidates"]) == 12
    path = write_rows(rows, tmp_path / "selfgen.jsonl")
    back = [json.loads(line) for line in path.read_text().splitlines()]
    assert [b["rejected"] for b in back] == [r.rejected for r in rows]
    assert np.all([b["source_system"] == "self" for b in back])
