"""Export of a trained run from its Orbax checkpoint (library, CLI and the config's export section).

A tiny LoRA run directory is written the way the training loop writes it (config.yaml,
tokenizer/, checkpoints/<step> with the adapters), then exported; the merged export is loaded
by transformers and the PEFT export read back into a freshly built run model, and both must
reproduce the logits of the model that was checkpointed.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import transformers
from flax import nnx
from train_runs import tiny_lora_run

from almol_jax.data.tokenizer import byte_tokenizer
from almol_jax.export import export_from_config, export_run, load_peft_adapter
from almol_jax.export.__main__ import main as export_cli
from almol_jax.model import LoRAParam
from almol_jax.run.checkpoint import RunCheckpointer
from almol_jax.run.setup import build_run_model
from almol_jax.train.step import init_train_state

torch = pytest.importorskip(
    "torch", reason="torch is a test-only dependency (requirements-dev.txt), not installed here"
)

STEP = 7


@nnx.jit
def _forward(model, ids):
    return model(ids)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(run_dir, config, trained model) of a checkpointed tiny LoRA run."""
    run_dir = tmp_path_factory.mktemp("run")
    cfg, model = tiny_lora_run(
        run_dir, export={"dir": str(run_dir / "export_at_end"), "format": "merged"}
    )
    leaves, treedef = jax.tree.flatten(nnx.state(model, LoRAParam))
    keys = jax.random.split(jax.random.key(11), len(leaves))
    trained = [
        0.05 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)
    ]
    nnx.update(model, jax.tree.unflatten(treedef, trained))
    ckpt = RunCheckpointer(run_dir, async_save=False)
    ckpt.save(STEP, init_train_state(nnx.state(model, LoRAParam), optax.adam(1e-3)), {"seed": 3})
    ckpt.close()
    return run_dir, cfg, model


def _ids():
    return np.random.default_rng(0).integers(4, 260, size=(2, 10)).astype(np.int32)


def test_export_run_merged_matches_the_checkpointed_model(run, tmp_path):
    run_dir, _, model = run
    out = export_run(run_dir, tmp_path / "merged", "merged", "float32", "5GB")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = _ids()
    with torch.no_grad():
        theirs = hf_model(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    ours = np.asarray(_forward(model, jnp.asarray(ids)))
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-4)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation == {
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 3,  # the model config has none: the tokenizer's
        "do_sample": False,
        "max_new_tokens": 300,
    }
    assert transformers.AutoTokenizer.from_pretrained(out).eos_token_id == 2


def test_cli_peft_export_of_a_step_folder_reads_back(run, tmp_path):
    run_dir, cfg, model = run
    out = tmp_path / "peft"
    step_dir = run_dir / "checkpoints" / str(STEP)
    argv = [
        "--checkpoint",
        str(step_dir),
        "--out",
        str(out),
        "--format",
        "peft",
        "--dtype",
        "float32",
    ]
    assert export_cli(argv) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((out / "base").absolute())
    fresh = build_run_model(cfg)  # the run's base with untrained adapters
    ids = jnp.asarray(_ids())
    before = np.asarray(_forward(model, ids))
    assert np.abs(np.asarray(_forward(fresh, ids)) - before).max() > 1e-2
    load_peft_adapter(fresh, out)
    np.testing.assert_allclose(np.asarray(_forward(fresh, ids)), before, rtol=0, atol=1e-6)


def test_export_section_of_the_run_config_drives_the_end_of_run_export(run):
    _, cfg, model = run
    out = export_from_config(cfg, model, byte_tokenizer())
    assert out == run[0] / "export_at_end"
    config = json.loads((out / "config.json").read_text())
    assert (config["dtype"], config["vocab_size"]) == ("bfloat16", 260)  # the section's default
    assert (out / "model.safetensors").is_file()
