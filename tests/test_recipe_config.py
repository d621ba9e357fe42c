"""The recipe's config contract: `data.train_files=PATH` and `PATH,PATH` in every shipped config,
`tokenizer.path: null` = the checkpoint's own tokenizer, `data.format: auto` per file (a scorer
TSV given to configs/tiny.yaml), `data.templates: chat`, and the tokenizer-vs-vocabulary check."""

from __future__ import annotations

from pathlib import Path

import pytest

from almol_jax.config import load_config
from almol_jax.data.prompts import format_prompt
from almol_jax.data.report import DataReport
from almol_jax.data.sources import load_examples
from almol_jax.data.tokenize import tokenize_examples
from almol_jax.data.tokenizer import byte_tokenizer, check_vocab_fits
from almol_jax.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
CHAT = (
    "{% for m in messages %}[{{ m['role'] }}]\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]\n{% endif %}"
)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_train_files_path_and_path_list_in_every_shipped_config(path):
    one = load_config(path, ["data.train_files=prefs_train.jsonl", "model.source=/tmp"])
    assert one.data.train_files == ("prefs_train.jsonl",)
    two = load_config(path, ["data.train_files=a.jsonl,b.tsv", "model.source=/tmp"])
    assert two.data.train_files == ("a.jsonl", "b.tsv")
    assert load_config(path).data.format == "auto"  # detected per file


def test_directions_keyword_and_one_direction_override():
    tiny = REPO / "configs/tiny.yaml"
    assert load_config(tiny, ["data.directions=both"]).data.directions == "both"
    assert load_config(tiny, ["data.directions=smiles2caption"]).data.directions == (
        "smiles2caption",
    )


def test_tokenizer_path_null_is_the_model_source():
    cfg = load_config(REPO / "configs/almol_meditron7b_lpm24.yaml", ["model.source=/models/m"])
    assert (cfg.tokenizer.kind, cfg.tokenizer.path) == ("hf", "/models/m")
    own = load_config(None, ["tokenizer.kind=hf", "tokenizer.path=/tok", "model.source=/m"])
    assert own.tokenizer.path == "/tok"  # an explicit path wins
    with pytest.raises(ConfigError, match="model.source"):
        load_config(None, ["tokenizer.kind=hf"])


def test_scorer_tsv_and_pairs_files_with_the_tiny_config(tmp_path):
    """A scorer-format TSV next to a preference JSONL, each detected on its own."""
    tsv = tmp_path / "scorer.tsv"
    tsv.write_text("SMILES\tground truth\toutput\nCCO\tAn alcohol.\tAn amine.\n", "utf-8")
    prefs = REPO / "tests/data/tiny_prefs.jsonl"
    cfg = load_config(REPO / "configs/tiny.yaml", [f"data.train_files={prefs},{tsv}"])
    report = DataReport()
    examples = load_examples(cfg.data, "train", report)
    assert examples[-1].source == "CCO" and examples[-1].rejected == "An amine."
    assert len(examples) == 65


def _chat_tokenizer():
    tok = byte_tokenizer()
    tok.chat_template = CHAT
    return tok


def test_chat_templates_wrap_the_instruction_and_keep_the_trl_rule():
    tok = _chat_tokenizer()
    prompt = format_prompt("chat", "smiles2caption", "CCO", tok)
    message = [{"role": "user", "content": "Describe this molecule in one caption.\nMolecule: CCO"}]
    assert prompt == tok.apply_chat_template(message, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("[assistant]\n")
    cfg = load_config(
        REPO / "configs/tiny.yaml", ["data.templates=chat", "tokenizer.kind=hf", "model.source=/m"]
    )
    examples = load_examples(cfg.data, "train", DataReport())[:2]
    rows = tokenize_examples(
        examples, tok, templates="chat", max_length=400, max_prompt_length=300, add_bos=True
    )
    for ex, row in zip(examples, rows, strict=True):
        p = tok(format_prompt("chat", ex.direction, ex.source, tok), add_special_tokens=False)
        assert list(row.chosen.prompt_ids) == [tok.bos_token_id, *p["input_ids"]]
        chosen = tok(ex.chosen, add_special_tokens=False)["input_ids"]
        assert list(row.chosen.response_ids) == [*chosen, tok.eos_token_id]


def test_chat_templates_need_an_hf_tokenizer_with_a_template():
    with pytest.raises(ConfigError, match="chat"):
        load_config(REPO / "configs/tiny.yaml", ["data.templates=chat"])  # byte tokenizer
    with pytest.raises(ConfigError, match="chat template"):
        format_prompt("chat", "smiles2caption", "CCO", byte_tokenizer())


def test_a_tokenizer_larger_than_the_vocabulary_names_both_sizes(tmp_path):
    with pytest.raises(ConfigError, match=r"260 tokens.*vocabulary of 200"):
        check_vocab_fits(byte_tokenizer(), 200, "preset 'tiny'")
    check_vocab_fits(byte_tokenizer(), 260, "preset 'tiny'")
    from almol_jax.train.data_setup import build_data

    cfg = load_config(REPO / "configs/tiny.yaml", ["model.overrides.vocab_size=200"])
    with pytest.raises(ConfigError, match=r"260 tokens.*'tiny'.*vocabulary of 200"):
        build_data(cfg)


def test_lora_init_reaches_the_config_and_its_reference():
    cfg = load_config(REPO / "configs/almol_smollm2.yaml", ["lora.init=a_zero"])
    assert cfg.lora.for_model().init == "a_zero"
    docs = (REPO / "docs/configuration.md").read_text("utf-8")
    assert "`lora.init`" in docs and "`data.templates`" in docs
