"""Builds the objects of a run from its RunConfig: mesh, model (seeded by purpose), tokenizer.

Shared by the training loop and `restore_for_inference`, so a restored run rebuilds exactly the
network it trained (same preset/overrides or HF source, same seed for a random-init base). The
model's random draws come from the run's keys by purpose (`seeds.seed_keys`): base weights from
"params", adapters from "lora", adapter dropout from "dropout".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from almol_jax.seeds import seed_keys


def lora_config(cfg) -> Any:
    """The model's LoraConfig for a RunConfig, or None when LoRA is off."""
    return cfg.lora.for_model()


def _model_overrides(cfg) -> dict[str, Any]:
    m = cfg.model
    return dict(
        dict(m.overrides),
        dtype=m.dtype,
        param_dtype=m.param_dtype or m.dtype,
        vocab_multiple=m.vocab_multiple,
        kernels=m.kernels,
        attention_impl=m.attention_impl,
        remat=m.remat,
    )


def model_config(cfg) -> Any:
    """ModelConfig of a RunConfig (preset + overrides, or the HF source's config.json)."""
    from almol_jax.model import ModelConfig

    m = cfg.model
    if m.source is None:
        return ModelConfig.preset(m.preset, **_model_overrides(cfg))
    from almol_jax.model.hf_weights import resolve_checkpoint_dir

    ckpt_dir = resolve_checkpoint_dir(m.source)
    return ModelConfig.from_hf_config(ckpt_dir / "config.json", **_model_overrides(cfg))


def build_run_model(cfg, *, mesh=None) -> Any:
    """The network of a run, sharded on `mesh`: HF weights (source) or seeded random init.

    Adapters (LoRA runs) are freshly initialised from the "lora" key and their dropout draws from
    the "dropout" key; a checkpoint restore replaces the adapters.
    """
    from flax import nnx

    from almol_jax.model import build_model, load_model

    rules = cfg.mesh.rules
    lora = lora_config(cfg)
    keys = seed_keys(cfg.seed)
    rngs = nnx.Rngs(**{purpose: keys[purpose] for purpose in ("params", "lora", "dropout")})
    m = cfg.model
    if m.source is None:
        return build_model(model_config(cfg), lora=lora, rngs=rngs, mesh=mesh, rules=rules)
    overrides = _model_overrides(cfg)
    dtype, param_dtype = overrides.pop("dtype"), overrides.pop("param_dtype")
    return load_model(
        m.source,
        dtype=dtype,
        param_dtype=param_dtype,
        lora=lora,
        mesh=mesh,
        rules=rules,
        rngs=rngs,
        config_overrides=overrides,
    )


def make_run_mesh(cfg, devices=None):
    """The ("data", "fsdp", "tensor") mesh of a run over all (global) devices."""
    from almol_jax.sharding import make_mesh

    return make_mesh(cfg.mesh, devices=devices)


def load_run_tokenizer(run_dir: str | Path | None, cfg) -> Any:
    """The run's saved tokenizer (<run_dir>/tokenizer) when present, else the configured one."""
    saved = Path(run_dir) / "tokenizer" if run_dir is not None else None
    if saved is not None and saved.is_dir():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(saved), trust_remote_code=False)
        if tok.pad_token_id is None:
            tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
        return tok
    from almol_jax.data.tokenizer import load_tokenizer

    return load_tokenizer(cfg.tokenizer)
