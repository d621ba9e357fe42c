"""Tokenisation: TRL's rule (parity with TRL CPOTrainer.tokenize_row), tokenizers, truncation."""

import json
import types
from pathlib import Path

import pytest

from almol_jax.config.sections import TemplatesSection, TokenizerSection
from almol_jax.data.prompts import format_prompt
from almol_jax.data.report import DataReport
from almol_jax.data.tokenize import prompt_ids, split_prompt_response, tokenize_row
from almol_jax.data.tokenizer import BYTE_VOCAB_SIZE, load_tokenizer

DATA = Path(__file__).resolve().parent / "data"
ROWS = [json.loads(line) for line in (DATA / "tiny_prefs.jsonl").read_text().splitlines()]
TEMPLATES = TemplatesSection()  # the Meditron L+M-24 prompts


@pytest.fixture(scope="module")
def byte_tok():
    return load_tokenizer(TokenizerSection(kind="byte"))


@pytest.fixture(scope="module")
def sp_tok(tmp_path_factory):
    """A small LLaMA-style SentencePiece BPE (byte fallback, dummy prefix) trained here."""
    import sentencepiece as spm

    out = tmp_path_factory.mktemp("sp")
    texts = [r["source"] for r in ROWS] + [r["chosen"] for r in ROWS]
    texts += [
        format_prompt(TEMPLATES, "smiles2caption", "x"),
        format_prompt(TEMPLATES, "caption2smiles", "x"),
    ]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts * 3), model_prefix=str(out / "sp"), model_type="bpe",
        vocab_size=500, byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2,
        pad_id=3, hard_vocab_limit=False, minloglevel=2, num_threads=1, seed_sentencepiece_size=10000,
    )  # fmt: skip
    return load_tokenizer(TokenizerSection(kind="sentencepiece", path=str(out / "sp.model")))


def test_byte_tokenizer_round_trips_any_text_and_saves(byte_tok, tmp_path):
    from transformers import AutoTokenizer

    text = "CC(=O)O é 漢字 \x00\t<s></s> 100%"
    ids = byte_tok(text, add_special_tokens=False)["input_ids"]
    assert ids == [4 + b for b in text.encode("utf-8")]  # one token per byte, "<s>" is 3 bytes
    assert byte_tok.decode(ids) == text
    assert (byte_tok.bos_token_id, byte_tok.eos_token_id, byte_tok.pad_token_id) == (1, 2, 3)
    assert len(byte_tok) == BYTE_VOCAB_SIZE == 260
    byte_tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text, add_special_tokens=False)["input_ids"] == ids
    assert again.bos_token_id == 1 and again.eos_token_id == 2


def test_tokenizer_errors_name_the_value(tmp_path):
    with pytest.raises(ValueError, match="no SentencePiece model"):
        load_tokenizer(TokenizerSection(kind="sentencepiece", path=str(tmp_path / "x.model")))
    with pytest.raises(ValueError, match="takes no path"):
        load_tokenizer(TokenizerSection(kind="byte", path="somewhere"))
    with pytest.raises(ValueError, match=r"tokenizer.path='.*nowhere'"):
        load_tokenizer(TokenizerSection(kind="hf", path=str(tmp_path / "nowhere")))


def trl_rows(tok, prompt, chosen, rejected, max_length):
    """TRL CPOTrainer.tokenize_row run on a stand-in trainer (the independent implementation)."""
    cpo = pytest.importorskip(
        "trl.experimental.cpo.cpo_trainer",
        reason="trl is a test-only dependency (requirements-dev.txt), not installed here",
    )
    fake = types.SimpleNamespace(
        processing_class=tok, is_encoder_decoder=False, max_length=max_length
    )
    fake.build_tokenized_answer = lambda p, a: cpo.CPOTrainer.build_tokenized_answer(fake, p, a)
    out = cpo.CPOTrainer.tokenize_row(
        fake, {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    )
    return {
        kind: (out[f"{kind}_input_ids"], [int(x != -100) for x in out[f"{kind}_labels"]])
        for kind in ("chosen", "rejected")
    }


def ours(tok, prompt, response, max_length, report=None):
    row = tokenize_row(
        tok,
        prompt,
        response,
        max_length=max_length,
        max_prompt_length=max_length - 1,
        report=report,
    )
    ids = list(row.prompt_ids + row.response_ids)
    return ids, [0] * len(row.prompt_ids) + [1] * len(row.response_ids)


@pytest.mark.parametrize("which", ["byte_tok", "sp_tok"])
def test_matches_trl_tokenize_row(which, request):
    tok = request.getfixturevalue(which)
    cases = [
        (format_prompt(TEMPLATES, r["direction"], r["source"]), r["chosen"], r["rejected"])
        for r in ROWS[:24]
    ]
    # Boundary cases: a prompt ending mid-word (the tokenizer merges across the boundary).
    cases += [
        ("The mole", "cule is an alcohol.", "cule is acid."),
        ("Caption: gly", "cine", "cerol"),
    ]
    merged = 0
    for prompt, chosen, rejected in cases:
        want = trl_rows(tok, prompt, chosen, rejected, max_length=4096)
        for kind, response in (("chosen", chosen), ("rejected", rejected)):
            assert ours(tok, prompt, response, 4096) == want[kind], (prompt, response)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        merged += split_prompt_response(tok, prompt, chosen)[0] != p
    if which == "sp_tok":
        assert merged >= 1, "no case exercised the merged-boundary rule"


@pytest.mark.parametrize("which", ["byte_tok", "sp_tok"])
def test_response_truncation_matches_trl(which, request):
    tok = request.getfixturevalue(which)
    report = DataReport()
    prompt = format_prompt(TEMPLATES, "smiles2caption", ROWS[0]["source"])
    n_prompt = 1 + len(tok(prompt, add_special_tokens=False)["input_ids"])
    max_length = n_prompt + 5
    want = trl_rows(tok, prompt, ROWS[0]["chosen"], ROWS[0]["rejected"], max_length=max_length)
    got = ours(tok, prompt, ROWS[0]["chosen"], max_length, report)
    assert got == want["chosen"]
    assert sum(got[1]) == 5 and len(got[0]) == max_length
    assert report.truncated["train"]["chosen_response"] == 1


def test_rule_on_hand_made_example(byte_tok):
    row = tokenize_row(byte_tok, "ab", "c", max_length=16, max_prompt_length=8)
    assert row.prompt_ids == (1, 4 + ord("a"), 4 + ord("b"))
    assert row.response_ids == (4 + ord("c"), 2)  # response + EOS
    assert prompt_ids(byte_tok, "ab") == [1, 4 + ord("a"), 4 + ord("b")]
    assert prompt_ids(byte_tok, "ab", add_bos=False) == [4 + ord("a"), 4 + ord("b")]


def test_prompt_truncation_keeps_bos_and_end(byte_tok):
    report = DataReport()
    row = tokenize_row(
        byte_tok, "0123456789", "xyz", max_length=12, max_prompt_length=5, report=report
    )
    assert row.prompt_ids == (1, *[4 + ord(c) for c in "6789"])
    assert row.response_ids == tuple(4 + ord(c) for c in "xyz") + (2,)
    # The response is cut to fit, never emptied.
    row = tokenize_row(
        byte_tok, "0123456789", "abcdefghij", max_length=7, max_prompt_length=6, report=report
    )
    assert len(row.prompt_ids) == 6 and row.response_ids == (4 + ord("a"),)
    assert report.truncated["train"] == {"prompt": 2, "chosen_response": 1}
    with pytest.raises(ValueError, match="max_prompt_length=7 < max_length=7"):
        tokenize_row(byte_tok, "a", "b", max_length=7, max_prompt_length=7)


def test_format_prompt_is_plain_substitution():
    src = "C%s{0}{source}"
    prompt = format_prompt(TEMPLATES, "smiles2caption", src)
    assert "Molecule: C%s{0}{source} \nIn that molecule" in prompt
    assert prompt.endswith("### Response:")
    with pytest.raises(ValueError, match="direction='s2c'"):
        format_prompt(TEMPLATES, "s2c", "C")
