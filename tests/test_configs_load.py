"""Every shipped YAML in configs/ loads, validates and survives a dump -> load round trip."""

from pathlib import Path

import pytest

from almol_jax.config import dump_config, load_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"tiny.yaml", "tiny_sft.yaml", "almol_meditron7b_lpm24.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path, tmp_path):
    cfg = load_config(path)
    dump_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_published_recipe_values():
    """The ALMol recipe as ALMOL.md states it."""
    cfg = load_config(CONFIG_DIR / "almol_meditron7b_lpm24.yaml")
    assert (cfg.lora.enabled, cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules) == (
        True, 64, 16.0, "all-linear",
    )  # fmt: skip
    assert (cfg.objective.name, cfg.objective.beta, cfg.objective.cpo_alpha) == ("cpo", 0.1, 1.0)
    t = cfg.train
    assert (t.learning_rate, t.schedule, t.warmup_ratio, t.max_grad_norm) == (
        5e-5,
        "linear",
        0.1,
        1.0,
    )
    assert (t.adam_b1, t.adam_b2, t.adam_eps, t.weight_decay) == (0.9, 0.999, 1e-8, 0.0)
    assert t.micro_batch_size * t.grad_accum == 64
    assert cfg.model.dtype == "bfloat16"
    assert (cfg.generation.max_new_tokens, cfg.generation.do_sample, cfg.generation.num_beams) == (
        300, False, 1,
    )  # fmt: skip


def test_tiny_config_files_exist():
    """The tiny configs point at files shipped in the repo (paths relative to the repo root)."""
    root = CONFIG_DIR.parent
    for name in ("tiny.yaml", "tiny_sft.yaml", "tiny_lora_dpo.yaml"):
        cfg = load_config(CONFIG_DIR / name)
        for f in cfg.data.train_files + cfg.data.validation_files:
            assert (root / f).is_file(), f


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_model_section_builds_a_model_config(path):
    """preset + overrides make a valid ModelConfig; a byte tokenizer fits the vocabulary."""
    from almol_jax.model import config as model_config

    cfg = load_config(path)
    mc = model_config.ModelConfig.preset(cfg.model.preset, **cfg.model.overrides)
    if cfg.tokenizer.kind == "byte":
        assert mc.vocab_size >= 260 and (mc.bos_token_id, mc.eos_token_id) == (1, 2)
