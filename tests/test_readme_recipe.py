"""The README's recipe command, taken from README.md's text, run as printed on a real-shaped
checkpoint: a small LLaMA written by transformers with a LLaMA SentencePiece tokenizer plus added
tokens (as Meditron's 32,000 + 17). Only the paths are swapped for the test's (model.source) and a
few size overrides are appended (steps, batch, lengths); the data files and the output dir are the
README's own relative names, in a temporary working directory. Then the README's PEFT export
command (also from its text) runs, and peft/transformers check that the PEFT export on the base
and the merged export written at the end of the run give the same logits.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from tests.readme_commands import command_argv

REPO = Path(__file__).resolve().parents[1]
ADDED_SPECIAL = ["<|im_start|>", "<|im_end|>"]
ADDED_PLAIN = ["<mol>", "</mol>"]
# test-size overrides appended to the README command (the recipe is a 7B, 3-epoch run)
SIZE = [
    "train.steps=3",
    "train.micro_batch_size=2",
    "train.grad_accum=2",
    "train.learning_rate=1e-2",  # large enough that 3 steps move the adapters visibly
    "train.warmup_ratio=0",
    "train.log_every=1",
    "data.max_length=384",
    "data.max_prompt_length=320",
    "data.buckets=[]",
    "checkpoint.async_save=false",
    "logging.tensorboard=false",
]


def recipe_command() -> list[str]:
    """The recipe's train.py command from README.md, as argv after `python train.py`."""
    return command_argv("The real recipe", "train.py", ["python", "train.py"])


def peft_export_command() -> list[str]:
    """The README's PEFT export command, as argv after `python -m almol_jax.export`."""
    return command_argv("Export", "--format peft", ["python", "-m", "almol_jax.export"])


def _entry(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _write_checkpoint(out: Path) -> tuple[Path, object]:
    """A random transformers LLaMA + a SentencePiece LLaMA tokenizer with added tokens."""
    import torch
    import transformers

    from almol_jax.data.demo.tokenizer_sp import train_sentencepiece

    rows = [json.loads(line) for line in (REPO / "tests/data/tiny_prefs.jsonl").open()]
    texts = [r[k] for r in rows for k in ("source", "chosen", "rejected")]
    sp_dir = train_sentencepiece(texts * 4, out / "sp", vocab_size=400)
    tok = transformers.AutoTokenizer.from_pretrained(str(sp_dir))
    tok.add_special_tokens({"additional_special_tokens": ADDED_SPECIAL})
    tok.add_tokens(ADDED_PLAIN)
    ckpt = out / "meditron-like"
    config = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).float().save_pretrained(ckpt, safe_serialization=True)
    tok.save_pretrained(str(ckpt))
    return ckpt, tok


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    """Runs the README's recipe command in a working dir holding its relative paths."""
    work = tmp_path_factory.mktemp("recipe")
    ckpt, tok = _write_checkpoint(work)
    rows = (REPO / "tests/data/tiny_prefs.jsonl").read_text().splitlines(keepends=True)
    argv = recipe_command()
    files = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in argv if "=" in a}
    (work / files["data.train_files"]).write_text("".join(rows[:48]))
    (work / files["data.validation_files"]).write_text("".join(rows[48:]))
    (work / "configs").symlink_to(REPO / "configs")
    argv = [f"model.source={ckpt}" if a.startswith("model.source=") else a for a in argv]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        assert _entry(REPO / "train.py", "almol_readme_train")([*argv, *SIZE]) == 0
        export_argv = peft_export_command()
        from almol_jax.export.__main__ import main as export_main

        assert export_main(export_argv) in (0, None)
    out = dict(argv=argv, export_argv=export_argv)
    out["run_dir"] = work / files["output_dir"]
    out["peft_dir"] = work / export_argv[export_argv.index("--out") + 1]
    return dict(out, work=work, ckpt=ckpt, tok=tok)


@pytest.mark.slow
def test_readme_recipe_command_trains_with_the_checkpoints_own_tokenizer(recipe_run):
    from almol_jax.config import load_config

    run_dir = recipe_run["run_dir"]
    cfg = load_config(run_dir / "config.yaml")
    assert cfg.tokenizer.path == str(recipe_run["ckpt"])  # null = the model's own
    assert cfg.data.train_files == ("prefs_train.jsonl",)  # one PATH, as printed
    assert (cfg.model.param_dtype, cfg.lora.r, cfg.lora.alpha) == ("bfloat16", 64, 16.0)
    saved = __import__("transformers").AutoTokenizer.from_pretrained(str(run_dir / "tokenizer"))
    text = "<mol>CCO</mol> <|im_start|>The molecule is an alcohol.<|im_end|>"
    assert saved(text)["input_ids"] == recipe_run["tok"](text)["input_ids"]
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r and "step" in r]
    assert len(losses) == 3 and all(np.isfinite(losses))


def _adapter_magnitudes(peft_dir: Path) -> dict[str, object]:
    """{merged weight name: s |B| |A|} from a PEFT export (adapter_model.safetensors)."""
    import torch
    from safetensors.torch import load_file

    config = json.loads((peft_dir / "adapter_config.json").read_text())
    s = config["lora_alpha"] / config["r"]
    tensors = load_file(str(peft_dir / "adapter_model.safetensors"))
    out = {}
    for key, a in tensors.items():
        if key.endswith("lora_A.weight"):
            b = tensors[key.replace("lora_A", "lora_B")]
            name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
            out[name] = s * (b.abs().to(torch.float32) @ a.abs().to(torch.float32))
    return out


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits.float().numpy()


@pytest.mark.slow
def test_peft_and_merged_exports_agree_in_peft_and_transformers(recipe_run):
    """PEFT(base rounded to bf16, the run's frozen base) + the exported adapters, merged by PEFT
    and rounded to bf16 like the export, equals the merged export of the run; and the trained
    adapters really change the logits (so the agreement is not the base's)."""
    import peft
    import torch
    import transformers

    ckpt, tok = recipe_run["ckpt"], recipe_run["tok"]
    base = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():  # the run's frozen base is bf16 (model.param_dtype)
        for p in base.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    ids = tok("<s>Molecule: CC(=O)O <mol> caption </mol>", add_special_tokens=False)["input_ids"]
    base_logits = _logits(base, ids)
    with_peft = peft.PeftModel.from_pretrained(base, recipe_run["peft_dir"]).eval()
    peft_logits = _logits(with_peft, ids)
    assert np.abs(peft_logits - base_logits).max() > 1e-2  # the adapters were trained
    merged_ref = with_peft.merge_and_unload()
    with torch.no_grad():  # the export's dtype (export.dtype: bfloat16)
        for p in merged_ref.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    merged_dir = recipe_run["run_dir"] / "export"
    merged = transformers.AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    # Weights, bound derived from bf16's unit roundoff u = 2^-8: ours = bf16(W + s A B) (fp32
    # adapters), PEFT's = bf16(W + s B' A') with the README export's bf16 adapters A', B' (each
    # within u relative): |ours - ref| <= u (|ours| + |ref|) + (2u + u^2) s |B'||A'| (1 + u)^2.
    u = 2.0**-8
    bound_ab = _adapter_magnitudes(recipe_run["peft_dir"])
    ref_sd = merged_ref.state_dict()
    for name, w in merged.state_dict().items():
        r = ref_sd[name]
        bound = u * (w.abs() + r.abs()) + 1e-7 * r.abs()
        if name in bound_ab:
            bound = bound + (2 * u + u * u) * (1 + u) ** 2 * bound_ab[name]
        assert bool(((w - r).abs() <= bound).all()), name
    ours = _logits(merged.eval(), ids)
    ref = _logits(merged_ref, ids)
    scale = np.abs(ref).max()
    # logits of weights that close (a few u relative): far below the adapters' effect above.
    assert np.abs(ours - ref).max() <= 2**-6 * scale
    assert np.abs(ours - peft_logits).max() <= 2**-6 * scale
    exported_tok = transformers.AutoTokenizer.from_pretrained(str(merged_dir))
    assert exported_tok.convert_tokens_to_ids(ADDED_SPECIAL + ADDED_PLAIN) == (
        tok.convert_tokens_to_ids(ADDED_SPECIAL + ADDED_PLAIN)
    )


def test_readme_paths_are_the_ones_the_test_swaps():
    """The README's command names the paths the test replaces (so a README edit is noticed)."""
    argv = recipe_command()
    keys = [a.split("=", 1)[0] for a in argv if "=" in a]
    assert keys == ["model.source", "data.train_files", "data.validation_files", "output_dir"]
    assert argv[:2] == ["--config", "configs/almol_meditron7b_lpm24.yaml"]
