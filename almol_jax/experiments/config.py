"""The experiment config: which arms, seeds, data, headline metrics and bootstrap settings.

An experiment YAML (configs/experiments/almol_mini.yaml is the default) holds ``common`` (a
train.py run config shared by every arm), ``arms.<arm>`` (merged over ``common``), the experiment
data (the embedded dataset, or pair / validation / test files and a tokenizer), the headline
metrics and the bootstrap settings; ``quick`` is merged over the whole file by ``--quick``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from almol_jax.directions import DIRECTIONS
from almol_jax.errors import ConfigError

# The arms in the order they run; the first two are trained once, the others once per seed.
BASE_ARMS = ("sft_full", "weak")
SEEDED_ARMS = ("cpo_10pct", "sft_10pct", "dpo_10pct")
ARMS = BASE_ARMS + SEEDED_ARMS
# The LoRA arms start from the merged export of this arm.
COUNTERPART = "sft_full"
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "experiments" / "almol_mini.yaml"
TOP_KEYS = ("seeds", "subset_fraction", "data", "headline", "bootstrap", "common", "arms", "quick")
DATA_KEYS = ("builtin", "train_pairs", "validation_files", "test_files", "tokenizer")


def deep_merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` merged in (nested dicts merged key by key, anything else replaced)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class ExperimentConfig:
    """A loaded experiment: plain data, checked once."""

    seeds: int
    subset_fraction: float
    data: dict[str, Any]
    headline: dict[str, tuple[str, ...]]
    bootstrap_samples: int
    confidence: float
    common: dict[str, Any]
    arms: dict[str, dict[str, Any]]
    source: str

    def arm_config(self, arm: str) -> dict[str, Any]:
        """``common`` with the arm's own section merged over it."""
        return deep_merge(self.common, self.arms.get(arm) or {})


def _check(raw: dict, path: str) -> None:
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown experiment keys {unknown} (known: {list(TOP_KEYS)})")
    arms = raw.get("arms") or {}
    missing = [a for a in ARMS if a not in arms]
    extra = sorted(set(arms) - set(ARMS))
    if missing or extra:
        raise ConfigError(
            f"{path}: arms must be exactly {list(ARMS)} (missing {missing}, unknown {extra})"
        )
    data = raw.get("data") or {}
    bad = sorted(set(data) - set(DATA_KEYS))
    if bad:
        raise ConfigError(f"{path}: unknown data keys {bad} (known: {list(DATA_KEYS)})")
    if not data.get("builtin") and not (data.get("train_pairs") and data.get("test_files")):
        raise ConfigError(f"{path}: data needs builtin: rdkit_nci, or train_pairs and test_files")
    if not 0.0 < float(raw.get("subset_fraction", 0.1)) <= 1.0:
        raise ConfigError(f"{path}: subset_fraction must be in (0, 1]")
    for direction in raw.get("headline") or {}:
        if direction not in DIRECTIONS:
            raise ConfigError(
                f"{path}: headline direction {direction!r} is not one of {DIRECTIONS}"
            )


def load_experiment(
    path: str | Path | None = None, *, quick: bool = False, seeds: int | None = None
) -> ExperimentConfig:
    """The experiment at ``path`` (default: almol_mini.yaml), ``quick`` merged in, ``seeds`` set."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"experiment config {str(path)!r} does not exist")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: an experiment config is a mapping")
    _check(raw, str(path))
    if quick:
        raw = deep_merge(raw, raw.get("quick") or {})
    if seeds is not None:
        raw["seeds"] = seeds
    if int(raw.get("seeds", 3)) < 1:
        raise ConfigError(f"seeds={raw.get('seeds')} must be >= 1")
    boot = raw.get("bootstrap") or {}
    return ExperimentConfig(
        seeds=int(raw.get("seeds", 3)),
        subset_fraction=float(raw.get("subset_fraction", 0.1)),
        data={k: raw.get("data", {}).get(k) for k in DATA_KEYS},
        headline={d: tuple(m) for d, m in (raw.get("headline") or {}).items()},
        bootstrap_samples=int(boot.get("samples", 2000)),
        confidence=float(boot.get("confidence", 0.95)),
        common=raw.get("common") or {},
        arms=raw["arms"],
        source=str(path),
    )
