"""The beam pool (generation/beam.py: beam_pool) and the final RDKit check of beam search with the
SMILES grammar (generation/rdkit_check.py, `generation.smiles_rdkit_check`).

Oracles: transformers' `generate(num_beams=K, num_return_sequences=K)` returns every hypothesis of
its pool with `sequences_scores` (a random LLaMA saved and loaded with almol_jax.load_model), and
RDKit's `Chem.MolFromSmiles` decides which hypotheses sanitise.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from rdkit import Chem, RDLogger

from almol_jax import load_model
from almol_jax.generation import (
    BeamPool,
    DecodeSettings,
    beam_pool,
    beam_search,
    grammar_tables,
    rdkit_check,
)
from almol_jax.generation.text import generate_token_ids, left_pad, settings_from_config
from almol_jax.model import LlamaForCausalLM, ModelConfig

torch = pytest.importorskip(
    "torch", reason="torch is a test-only dependency (requirements-dev.txt)"
)
from hf_fixtures import hf_generate, left_padded_prompts, make_hf_llama  # noqa: E402

RDLogger.DisableLog("rdApp.*")
VOCAB, WIDTH = 96, 3


def _prompts(lengths=(7, 12, 3, 10), vocab=VOCAB, seed=0):
    return left_padded_prompts(lengths, vocab, seed, low=4)


def _hf_pool(model, ids, mask, eos, **kwargs):
    """HF's returned hypotheses per row, best first: [(tokens up to EOS, score)]."""
    out = hf_generate(
        model, ids, mask, eos, do_sample=False, num_beams=WIDTH, num_return_sequences=WIDTH,
        output_scores=True, return_dict_in_generate=True, **kwargs,
    )  # fmt: skip
    seqs = out.sequences[:, ids.shape[1] :].numpy()
    scores = out.sequences_scores.numpy()
    rows = []
    for b in range(ids.shape[0]):
        hyps = []
        for k in range(b * WIDTH, (b + 1) * WIDTH):
            row = [int(t) for t in seqs[k]]
            hyps.append((row[: row.index(eos) + 1] if eos in row else row, float(scores[k])))
        rows.append(hyps)
    return rows


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(HF model, our model on the same weights)."""
    hf, path = make_hf_llama(
        tmp_path_factory.mktemp("pool"),
        vocab_size=VOCAB,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return hf, load_model(str(path), dtype="float32")


@pytest.mark.parametrize(
    ("early_stopping", "length_penalty"), [(False, 1.0), (True, 0.0), (False, 0.5)]
)
def test_every_hypothesis_of_the_pool_equals_hf(pair, early_stopping, length_penalty):
    hf, ours = pair
    ids, mask = _prompts()
    kwargs = dict(max_new_tokens=12, early_stopping=early_stopping, length_penalty=length_penalty)
    # EOS = a token of row 0's unconstrained best beam: hypotheses finish at different steps.
    eos = _hf_pool(hf, ids, mask, eos=None, **kwargs)[0][0][0][4]
    expected = _hf_pool(hf, ids, mask, eos=eos, **kwargs)
    settings = DecodeSettings(method="beam", num_beams=WIDTH, **kwargs)
    pool = beam_pool(ours, ids, mask, settings=settings, eos_ids=(eos,))
    got = [pool.hypotheses(b) for b in range(ids.shape[0])]
    assert [[h for h, _ in row] for row in got] == [[h for h, _ in row] for row in expected]
    np.testing.assert_allclose(
        [[s for _, s in row] for row in got],
        [[s for _, s in row] for row in expected],
        rtol=0,
        atol=1e-4,  # a sum of up to 12 float32 log-probs from two implementations
    )
    lengths = {len(h) for row in got for h, _ in row}
    assert len(lengths) > 1, "every hypothesis has one length: the test lost its point"
    # beam_search is the pool's best entry, padded alike.
    tokens, lens, scores = beam_search(ours, ids, mask, settings=settings, eos_ids=(eos,))
    np.testing.assert_array_equal(tokens, pool.tokens[:, 0])
    np.testing.assert_array_equal(lens, pool.lengths[:, 0])
    np.testing.assert_array_equal(scores, pool.scores[:, 0])


# ---- the RDKit check -------------------------------------------------------------------------------


def _rigged_pool(smiles_rows: list[list[str | None]]) -> tuple[BeamPool, dict[int, str]]:
    """A pool whose slot w of row b holds a one-token hypothesis standing for smiles_rows[b][w]
    (None: an unfinished slot), and the id -> SMILES map."""
    texts = sorted({s for row in smiles_rows for s in row if s is not None})
    ids = {s: i + 10 for i, s in enumerate(texts)}
    batch, width = len(smiles_rows), len(smiles_rows[0])
    tokens = np.zeros((batch, width, 4), np.int32)
    for b, row in enumerate(smiles_rows):
        for w, s in enumerate(row):
            tokens[b, w, :2] = (ids[s], 2) if s is not None else (5, 5)
    finished = np.array([[s is not None for s in row] for row in smiles_rows])
    scores = np.where(finished, -np.arange(width, dtype=np.float32)[None], -1e9)
    pool = BeamPool(tokens, np.where(finished, 2, 4).astype(np.int32), scores, finished)
    return pool, {i: s for s, i in ids.items()}


def test_the_check_keeps_the_best_ranked_beam_that_sanitises():
    rows = [
        ["c1cccc1", "C(C)(C)(C)(C)C", "CCO", "CC"],  # not kekulisable, pentavalent C, then ok
        ["c1ccccc1", "CCO", "CC", "C"],  # the best sanitises: kept
        ["c1cccc1", None, None, None],  # nothing sanitises: the best beam
        ["Cl(Cl)Cl", "n1cccc1", "c1cc[nH]c1", "CCO"],  # [nH] pyrrole sanitises, plain n does not
    ]
    pool, text_of = _rigged_pool(rows)

    def accept(b, w):
        ids = pool.tokens[b, w, : pool.lengths[b, w] - 1]  # EOS stripped
        return rdkit_check.sanitizes("".join(text_of[int(i)] for i in ids))

    slots = rdkit_check.choose_slots(pool, accept, rows=len(rows))
    expected = []
    for row in rows:  # the oracle: RDKit on the SMILES directly
        ok = [w for w, s in enumerate(row) if s is not None and Chem.MolFromSmiles(s) is not None]
        expected.append(ok[0] if ok else 0)
    assert slots.tolist() == expected == [2, 0, 0, 2]
    tokens, lengths = rdkit_check.chosen(pool, slots)
    np.testing.assert_array_equal(tokens[0], pool.tokens[0, 2])
    np.testing.assert_array_equal(lengths, [2, 2, 2, 2])
    assert not rdkit_check.sanitizes("")  # no atoms: not a molecule, although RDKit parses it


def test_the_switch_acts_with_grammar_beam_and_caption2smiles_only():
    from almol_jax.config import RunConfig

    def settings(**gen):
        return settings_from_config(RunConfig.from_dict({"generation": gen}))

    on = settings(smiles_grammar="on", num_beams=4)
    assert on.smiles_rdkit_check and on.rdkit_check_applies  # the default is on
    assert on.for_direction("caption2smiles").rdkit_check_applies
    assert not on.for_direction("smiles2caption").rdkit_check_applies
    assert not settings(
        smiles_grammar="on", num_beams=4, smiles_rdkit_check="off"
    ).rdkit_check_applies
    assert not settings(smiles_grammar="off", num_beams=4).rdkit_check_applies
    assert not settings(smiles_grammar="on", num_beams=1).rdkit_check_applies
    with pytest.raises(ValueError, match="smiles_rdkit_check"):
        settings(smiles_rdkit_check="maybe")


# A small SMILES vocabulary where a random model's beams often differ in sanitising: a lone aromatic
# 'c' never does, and the benzene token always does.
TEXTS = [None, None, None, None, "C", "O", "N", "c", "(", ")", "=", "c1ccccc1", "Cl", "C(=O)"]
SMALL_VOCAB, EOS, PAD = 32, 2, 3


@pytest.mark.slow
def test_decoding_with_the_check_keeps_a_later_sanitising_beam():
    texts = TEXTS + [None] * (SMALL_VOCAB - len(TEXTS))
    tables = grammar_tables.tables_from_texts(texts, [EOS])
    config = ModelConfig.preset(
        "tiny", vocab_size=SMALL_VOCAB, eos_token_id=EOS, pad_token_id=PAD, initializer_range=0.2
    )
    model = LlamaForCausalLM(config, rngs=nnx.Rngs(0))
    prompts = np.asarray(jax.random.randint(jax.random.key(0), (16, 6), 4, SMALL_VOCAB)).tolist()
    settings = DecodeSettings(
        method="beam", num_beams=4, max_new_tokens=12, smiles_grammar=True, batch_size=16
    ).replace(prompt_buckets=(8,))

    def smiles(ids):
        return "".join(texts[int(i)] for i in ids if int(i) != EOS)

    def decode(check: bool):
        return generate_token_ids(
            model,
            prompts,
            settings.replace(smiles_rdkit_check=check),
            grammar=tables,
            accept=lambda ids: rdkit_check.sanitizes(smiles(ids)),
        )

    ids_BP, mask_BP = left_pad(prompts, 8, PAD)
    pool = beam_pool(model, ids_BP, mask_BP, settings=settings, grammar=tables)
    hyps = [[smiles(h) for h, _ in pool.hypotheses(b)] for b in range(len(prompts))]
    ok = [[Chem.MolFromSmiles(s) is not None and s != "" for s in row] for row in hyps]
    expected = [
        row[ok_row.index(True)] if any(ok_row) else row[0]
        for row, ok_row in zip(hyps, ok, strict=True)
    ]
    on, off = decode(True), decode(False)
    assert [smiles(r) for r in on] == expected
    assert [smiles(r) for r in off] == [row[0] for row in hyps]  # off: the best beam unchanged
    later = [b for b, row in enumerate(ok) if not row[0] and any(row[1:])]
    assert later, "no row's best beam fails with a later one sanitising: the test lost its point"
    assert all(on[b] != off[b] for b in later)
