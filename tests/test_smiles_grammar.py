"""SMILES-grammar-constrained decoding (generation/smiles_grammar.py, grammar_tables.py).

Oracle: RDKit. The automaton is checked on hand-written SMILES against RDKit's parser; the
ChEBI-20 test SMILES are teacher-forced through the on-device mask with the demo's SentencePiece
tokenizer and a byte-level BPE trained here (never blocked); hypothesis random walks through the
mask end in strings RDKit parses; greedy / sampling / beam with the constraint on a tiny random
model give only parseable SMILES, and equal the unconstrained decoding when the mask allows all.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rdkit import Chem, RDLogger

from almol_jax.generation import DecodeSettings, decode_tokens, grammar_tables, settings_from_config
from almol_jax.generation import smiles_grammar as g
from almol_jax.model import LlamaForCausalLM, ModelConfig

RDLogger.DisableLog("rdApp.*")
CHEBI_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "chebi-20" / "test.txt"
EOS, PAD = 2, 3


def parses(smiles: str) -> bool:
    return Chem.MolFromSmiles(smiles, sanitize=False) is not None


def sanitizes(smiles: str) -> bool:
    return Chem.MolFromSmiles(smiles) is not None


# ---- the automaton on hand-written SMILES ---------------------------------------------------------

HAND_WRITTEN = [
    "CCO",
    "C1CC1",
    "C11",
    "C1C1",
    "C12CC12",
    "C12CCC1CC2",
    "C1CC2CC1C2",
    "C1.C1",
    "C1CC12",
    "C%10CC%10",
    "C%99CC%99",
    "C%01CC1",
    "C%1CC%1",
    "C0CC0",
    "C=1CC1",
    "C=1CC-1",
    "C(C)1CC1",
    "C(C)",
    "C()",
    "C(1)C",
    "C((C))C",
    "(C)C",
    "C(C.C)C",
    "C(.C)C",
    "C.(C)",
    "CC.",
    "C==C",
    "C//C",
    "C\\\\C",
    "C\\\\\\C",
    "C(=O)(O)",
    "C(",
    "C)",
    "C=",
    "C1",
    "[C",
    "",
    "Cl",
    "cl",
    "Br",
    "c1ccccc1",
    "c1cc[nH]c1",
    "[NH4+]",
    "[O-]C",
    "[C+2]",
    "[C++]",
    "[C+++]",
    "[C+-]",
    "[2H]",
    "[13CH3]",
    "[C@@H](N)(C)C(=O)O",
    "[C@@@H]",
    "[CH@]",
    "[C+H]",
    "[CH3:1]C",
    "[CH3:12]",
    "[H2]",
    "[Xx]",
    "[se]1cccc1",
    "[te]",
    "[ge]",
    "[in]",
    "[Fe+3]",
    "[Na+].[Cl-]",
    "*C",
    "[*:1]C",
    "C[C@]\\\\4(CC4)C",
    "[00Br]",
    "[0C]",
    "[123I]",
    "C%81%81.C%81",
    "B%86(C)%81.C%86%81",
    "[Cn]",
    "[Sc]",
    "N#N",
    "C$C",
    "C:C",
    "C~C",
    "c",
    "C1=C=1",
    "[C@TH1H]",
]


# RDKit parses these; the grammar does not take them.
REJECTED_ON_PURPOSE = {
    "[C@TH1H]": "chirality classes",
    "": "an empty output is no molecule",
    "C~C": "the SMARTS any-bond",
}


@pytest.mark.parametrize("smiles", HAND_WRITTEN)
def test_automaton_agrees_with_rdkit_parser(smiles):
    ((whole, _valence_ok),) = g.accepts([smiles])
    expected = parses(smiles) and smiles not in REJECTED_ON_PURPOSE
    assert whole == expected, smiles


@pytest.mark.parametrize(
    "smiles, ok",
    [
        ("C(C)(C)(C)C", True),
        ("C(C)(C)(C)(C)C", False),
        ("N(C)(C)C", True),
        ("N(C)(C)(C)C", False),
        ("O=C=O", True),
        ("OC#O", False),
        ("C=C#C", False),
        ("[NH4+]C", False),
        ("[NH3+]C", True),
        ("[O-]C", True),
        ("[O-](C)C", False),
        ("FC(F)(F)F", True),
        ("F(C)C", False),
        ("ClC(Cl)(Cl)Cl", True),
        ("[O-]Cl(=O)(=O)=O", True),
        ("C1CCCCC1(C)(C)", True),
        ("C1CCCCC1(C)(C)C", False),
        ("c1ccccc1", True),
        ("S(=O)(=O)(O)O", True),
    ],
)
def test_valence_of_the_current_atom(smiles, ok):
    """`vbad` exactly where RDKit's sanitisation reports a valence error (hand-picked cases)."""
    assert sanitizes(smiles) == ok  # the oracle agrees with the expectation
    ((whole, valence_ok),) = g.accepts([smiles])
    assert whole and valence_ok == ok, smiles


def test_distance_bounds_the_tokens_a_completion_needs():
    """From prefixes of valid SMILES, appending the closing characters the distance promises
    (atoms and digits per ring, ')' per branch) completes them within the bound."""
    for prefix, finish in [
        ("C1CC(C2CC", "C2)C1"),
        ("C(=", "C)"),
        ("C[N", "]"),
        ("C%1", "2CC%12"),
        ("C12", "CC1C2"),
    ]:
        state = g.run_chars(g.initial_state(), jnp.asarray(g.text_chars([prefix])[0]))
        assert not bool(g.complete(state))
        assert len(finish) <= int(g.distance(state)), prefix
        assert parses(prefix + finish)


# ---- the tokenizers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_tokenizer():
    from transformers import AutoTokenizer

    from almol_jax.data.demo import build_demo_dataset

    return AutoTokenizer.from_pretrained(str(build_demo_dataset(progress=False).tokenizer_dir))


@pytest.fixture(scope="module")
def bpe_tokenizer(demo_tokenizer):
    """A GPT-2-style byte-level BPE (vocab 400) trained on the demo dataset's training SMILES."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from almol_jax.data.demo import build_demo_dataset

    rows = build_demo_dataset(progress=False).pairs["train"].read_text().splitlines()
    smiles = [json.loads(r)["SMILES"] for r in rows]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(smiles, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    assert fast.eos_token_id == EOS and fast.pad_token_id == PAD
    return fast


@pytest.fixture(scope="module")
def tables(demo_tokenizer, bpe_tokenizer):
    return {
        "demo": grammar_tables.build_tables(demo_tokenizer, 1024, [EOS]),
        "bpe": grammar_tables.build_tables(bpe_tokenizer, len(bpe_tokenizer), [EOS]),
    }


def test_token_texts(demo_tokenizer, bpe_tokenizer):
    """SentencePiece '▁' is a space, <0xNN> a byte; byte-level 'Ġ' a space; specials are None."""
    sp = grammar_tables.token_texts(demo_tokenizer, 1030)
    ids = demo_tokenizer.encode("Caption: CC(=O)O", add_special_tokens=False)
    assert "".join(sp[i] for i in ids) == " Caption: CC(=O)O"
    assert sp[EOS] is None and sp[1024:] == [None] * 6
    bpe = grammar_tables.token_texts(bpe_tokenizer, len(bpe_tokenizer))
    ids = bpe_tokenizer.encode("c1ccccc1[N+](=O)[O-] x", add_special_tokens=False)
    assert "".join(bpe[i] for i in ids) == "c1ccccc1[N+](=O)[O-] x"


# ---- no false rejections: ChEBI-20 test SMILES teacher-forced through the mask ----------------------


CHUNK = 64  # tokens per call: one program for every row length (a scan per length compiles anew)


@jax.jit
def _teacher_force(tables, state, tokens_BN):
    """(the states after ``tokens_BN``, bool [B, N]: whether each token was allowed; pad after
    EOS counts as allowed)."""

    def body(state, token_B):
        mask = grammar_tables.allowed_mask(tables, state)
        ok = mask[jnp.arange(token_B.shape[0]), token_B] | (token_B == PAD)
        return grammar_tables.advance(tables, state, token_B), ok

    state, ok = jax.lax.scan(body, state, tokens_BN.T)
    return state, ok.T


def blocked_rows(tables, rows: list[list[int]], group: int = 400) -> list[int]:
    """Indices of token rows (EOS appended) with a token the mask forbids; rows grouped by
    length (a group of `group` rows, padded with PAD rows, runs CHUNK tokens per call)."""
    order = np.argsort([len(r) for r in rows], kind="stable")
    blocked = []
    for lo in range(0, len(rows), group):
        idx = order[lo : lo + group]
        width = -(-(max(len(rows[i]) for i in idx) + 1) // CHUNK) * CHUNK
        arr = np.full((group, width), PAD, np.int32)
        for k, i in enumerate(idx):
            arr[k, : len(rows[i])] = rows[i]
            arr[k, len(rows[i])] = EOS
        state, ok = grammar_tables.initial_states(group), []
        for c in range(0, width, CHUNK):
            state, ok_c = _teacher_force(tables, state, jnp.asarray(arr[:, c : c + CHUNK]))
            ok.append(np.asarray(ok_c))
        ok_rows = np.concatenate(ok, axis=1).all(axis=1)[: len(idx)]
        blocked += [int(i) for i in idx[~ok_rows]]
    return sorted(blocked)


def chebi_test_smiles() -> list[str]:
    if not CHEBI_TEST.exists():
        pytest.skip(f"ChEBI-20 test split not found at {CHEBI_TEST} (shared data folder absent)")
    lines = CHEBI_TEST.read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[1] for line in lines]


@pytest.mark.slow
def test_chebi_smiles_are_never_blocked_demo_tokenizer(demo_tokenizer, tables):
    """Every ChEBI-20 test SMILES, tokenised as the response of the demo template, passes the
    mask token by token and may end (EOS); the grammar supports every construct they use."""
    from almol_jax.data.tokenize import split_prompt_response

    smiles = chebi_test_smiles()
    assert len(smiles) == 3300
    rows = [split_prompt_response(demo_tokenizer, "Caption: x\nSMILES:", s)[1] for s in smiles]
    assert [smiles[i] for i in blocked_rows(tables["demo"], rows)] == []
    unclosed = split_prompt_response(demo_tokenizer, "Caption: x\nSMILES:", "C1CC(C")[1]
    assert blocked_rows(tables["demo"], [rows[0], unclosed, rows[1]]) == [1]  # EOS comes too early


@pytest.mark.slow
def test_chebi_smiles_are_never_blocked_byte_level_bpe(bpe_tokenizer, tables):
    smiles = chebi_test_smiles()
    rows = [bpe_tokenizer.encode(s, add_special_tokens=False) for s in smiles]
    assert max(len(r) for r in rows) < max(len(s) for s in smiles)  # merges span characters
    assert [smiles[i] for i in blocked_rows(tables["bpe"], rows)] == []


# ---- soundness: random walks through the mask end in strings RDKit parses ---------------------------


@jax.jit
def _walk_step(tables, state, remaining):
    return grammar_tables.allowed_mask(tables, state, remaining)[0]


@jax.jit
def _advance(tables, state, token):
    return grammar_tables.advance(tables, state, token)


def _random_walk(tables, texts, choices: list[int], budget: int = 48) -> tuple[str | None, int]:
    """Takes allowed tokens by the given choices (the mask told how many of `budget` tokens are
    left); returns (the text at EOS or None, tokens taken)."""
    state = grammar_tables.initial_states(1)
    out = []
    for t in range(4 * budget):
        left = jnp.int32(max(budget - t, 1))
        allowed = np.nonzero(np.asarray(_walk_step(tables, state, left)))[0]
        choice = choices[t % len(choices)]
        # EOS when it is allowed one time in three, else uniform over the allowed tokens
        token = EOS if EOS in allowed and choice % 3 == 0 else int(allowed[choice % len(allowed)])
        if token == EOS:
            return "".join(out).strip(), t + 1
        out.append(texts[token])
        state = _advance(tables, state, jnp.asarray([token], jnp.int32))
    return None, 4 * budget


@pytest.mark.parametrize("which", ["demo", "bpe"])
def test_random_walks_through_the_mask_parse(which, tables, demo_tokenizer, bpe_tokenizer):
    """Soundness: every walk that ends (EOS) ends in a string RDKit parses. The length budget
    (48 tokens) is a heuristic: most walks end within it (a walk that always takes the same
    choice may circle, e.g. '#' bonds between unconstrained '*' atoms)."""
    tok = demo_tokenizer if which == "demo" else bpe_tokenizer
    texts = grammar_tables.token_texts(tok, tables[which].chars_VL.shape[0])
    ended, in_budget = [], []

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.integers(0, 1 << 20), min_size=1, max_size=48))
    def walk(choices):
        smiles, steps = _random_walk(tables[which], texts, choices)
        in_budget.append(smiles is not None and steps <= 48)
        if smiles is not None:
            assert parses(smiles), smiles
            ended.append(smiles)

    walk()
    assert len(set(ended)) > 10  # the walks explore
    # the budget is a heuristic (g.distance is not exact when a ring cannot close on the current
    # atom); these adversarial walks end within it 65-100% of the time
    assert np.mean(in_budget) >= 0.5, np.mean(in_budget)


# ---- the exactly-run tokens: the fast paths equal a plain scan -------------------------------------

FORCED = [
    "C%10CC(C%11CC%11)C%10",
    "[NH3+]CC(=O)[O-]",
    "C1CC2(CC1)OC(=O)[C@@H]2N",
    "c1ccc2[nH]ccc2c1",
]


def _forced_states(tables, rows: list[list[int]], every: int = 3) -> g.GrammarState:
    """The states of `rows` teacher-forced through `advance`, every `every` tokens, stacked."""
    width = max(len(r) for r in rows)
    arr = np.zeros((len(rows), width), np.int32)  # 0 = <unk>, a non-candidate: a no-op
    for k, r in enumerate(rows):
        arr[k, : len(r)] = r
    state, out = grammar_tables.initial_states(len(rows)), []
    for t in range(width):
        state = _advance(tables, state, jnp.asarray(arr[:, t]))
        if t % every == every - 1:
            out.append(state)
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *out)


@pytest.mark.parametrize("which", ["demo", "bpe"])
def test_exact_runs_equal_a_plain_scan_on_the_whole_state(
    which, tables, demo_tokenizer, bpe_tokenizer
):
    """The tokens the mask runs per row (digits, '%', ')', text after ']') are answered by
    unrolled steps, and those without a digit or '%' on states without their ring labels plus
    a distance offset: acceptance and the distance after each equal `run_chars` (a scan of the
    token's characters on the whole state), on states of the demo data's test SMILES and of
    SMILES with %nn labels, charges and brackets teacher-forced through the mask's `advance`."""
    import json

    from almol_jax.data.demo import build_demo_dataset

    tok = demo_tokenizer if which == "demo" else bpe_tokenizer
    test = build_demo_dataset(progress=False).pairs["test"].read_text().splitlines()
    smiles = [json.loads(r)["SMILES"] for r in test[:30]] + FORCED
    rows = [tok.encode(s, add_special_tokens=False) for s in smiles]
    t = tables[which]
    states = _forced_states(t, rows, every=4)
    got_ok, got_dist = jax.jit(grammar_tables._exact_runs)(t, states)

    @jax.jit
    def scan_all(states, chars_RL):
        def one(s, chars):
            end = g.run_chars(s, chars)
            return (end.bad == 0) & (end.vbad == s.vbad), g.distance(end)

        return jax.vmap(lambda s: jax.vmap(lambda c: one(s, c))(chars_RL))(states)

    want_ok, want_dist = scan_all(states, t.chars_VL[t.ring_ids])
    assert np.asarray(want_ok).any() and not np.asarray(want_ok).all()  # the states vary
    np.testing.assert_array_equal(np.asarray(got_ok), np.asarray(want_ok))
    np.testing.assert_array_equal(np.where(want_ok, got_dist, 0), np.where(want_ok, want_dist, 0))


# ---- decoding with the constraint on a tiny random model ---------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    config = ModelConfig.preset(
        "tiny", vocab_size=1024, eos_token_id=EOS, pad_token_id=PAD, initializer_range=0.2
    )
    return LlamaForCausalLM(config, rngs=nnx.Rngs(3))


def _prompts(batch=4, length=9):
    ids = np.asarray(jax.random.randint(jax.random.key(1), (batch, length), 4, 1000), np.int32)
    mask = np.ones_like(ids)
    mask[0, :3] = 0  # one left-padded row
    return ids, mask


METHODS = [
    DecodeSettings(method="greedy", max_new_tokens=40),
    DecodeSettings(method="sample", max_new_tokens=40, temperature=1.5, top_k=50),
    DecodeSettings(method="beam", max_new_tokens=40, num_beams=3),
]


@pytest.mark.parametrize("base", METHODS, ids=lambda s: s.method)
def test_constrained_decoding_gives_only_parseable_smiles(base, tiny_model, tables, demo_tokenizer):
    ids, mask = _prompts()
    key = jax.random.key(0)
    free, free_len = decode_tokens(tiny_model, ids, mask, settings=base, key=key)
    on = base.replace(smiles_grammar=True)
    tokens, lengths = decode_tokens(
        tiny_model, ids, mask, settings=on, key=key, grammar=tables["demo"]
    )
    texts = [
        demo_tokenizer.decode(t[:n], skip_special_tokens=True).strip()
        for t, n in zip(tokens, lengths, strict=True)
    ]
    free_texts = [
        demo_tokenizer.decode(t[:n], skip_special_tokens=True)
        for t, n in zip(free, free_len, strict=True)
    ]
    assert all(tokens[b, n - 1] == EOS for b, n in enumerate(lengths))  # every row finished
    assert all(parses(s) and s for s in texts), texts
    assert not all(parses(s) for s in free_texts)  # the random model alone writes no SMILES


@pytest.mark.parametrize("base", METHODS, ids=lambda s: s.method)
def test_a_mask_that_allows_all_changes_nothing(base, tiny_model, tables, monkeypatch):
    """The constrained programs (mask, state carry, remaining budget) equal the free ones when
    the mask binds nowhere; and off is the unconstrained program whatever grammar is passed."""
    ids, mask = _prompts()
    key = jax.random.key(7)
    free = decode_tokens(tiny_model, ids, mask, settings=base, key=key)
    ignored = decode_tokens(tiny_model, ids, mask, settings=base, key=key, grammar=tables["demo"])
    np.testing.assert_array_equal(free[0], ignored[0])
    monkeypatch.setattr(
        grammar_tables, "allowed_mask", lambda t, s, r=None: jnp.ones((s.ph.shape[0], 1024), bool)
    )
    jax.clear_caches()
    on = decode_tokens(
        tiny_model,
        ids,
        mask,
        settings=base.replace(smiles_grammar=True),
        key=key,
        grammar=tables["demo"],
    )
    jax.clear_caches()
    np.testing.assert_array_equal(free[0], on[0])
    np.testing.assert_array_equal(free[1], on[1])


def test_settings_carry_the_switch_to_caption2smiles_only():
    from almol_jax.config import RunConfig

    cfg = RunConfig.from_dict({"generation": {"smiles_grammar": "on"}})
    settings = settings_from_config(cfg)
    assert settings.smiles_grammar
    assert settings.for_direction("caption2smiles").smiles_grammar
    assert not settings.for_direction("smiles2caption").smiles_grammar
    assert not settings_from_config(RunConfig.from_dict({})).smiles_grammar
    with pytest.raises(ValueError, match="grammar tables"):
        decode_tokens(None, np.ones((1, 2)), np.ones((1, 2)), settings=settings)
