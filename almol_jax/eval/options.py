"""How to score: `EvalOptions` (every field has the reference scorers' default) and
`eval_options_from_config`, which builds them from a RunConfig's ``eval`` section.

Both tasks' scorers (`molecule_scoring`, `caption_scoring`) and the entry points read them; kept
apart so the options exist once, whatever task is scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from almol_jax.errors import ConfigError
from almol_jax.eval.chrf import ChrfConfig


@dataclass(frozen=True)
class EvalOptions:
    """How to score; every field has the reference scorers' default."""

    fingerprint_averaging: str = "molt5"  # molt5: FTS over valid rows; lpm24: invalid = 0
    morgan_radius: int = 2
    chrf: ChrfConfig = field(default_factory=ChrfConfig)
    text_trunc_length: int = 512  # SciBERT tokens kept for BLEU/METEOR
    fcd: bool = True  # compute FCD when fcd_torch is installed
    fcd_device: str = "cpu"
    scibert_vocab: str | None = None  # explicit vocab.txt (or its directory)
    wordnet_dir: str | None = None  # explicit NLTK_DATA root or WordNet dict directory
    nested_props: str | None = None  # L+M-24 nested_props.json: enables property metrics
    withheld_combos: str | None = None  # L+M-24 withheld combos file: combination metrics
    skip_unavailable: bool = False  # a missing resource skips its metrics instead of raising
    num_workers: int | None = None  # worker processes; None = CPUs available (<= 8)
    progress: bool = False  # tqdm progress bars
    start_method: str | None = None  # multiprocessing start method; None = fork if safe
    reference_cache: bool = True  # reuse the reference side across runs (reference_cache.py)

    def __post_init__(self):
        if self.fingerprint_averaging not in ("molt5", "lpm24"):
            raise ConfigError(
                f"fingerprint_averaging={self.fingerprint_averaging!r} is not 'molt5' or 'lpm24'"
            )
        if self.morgan_radius < 0:
            raise ConfigError(f"morgan_radius={self.morgan_radius} must be >= 0")
        if self.text_trunc_length < 1:
            raise ConfigError(f"text_trunc_length={self.text_trunc_length} must be >= 1")
        if self.num_workers is not None and self.num_workers < 1:
            raise ConfigError(f"num_workers={self.num_workers} must be >= 1")
        if self.withheld_combos and not self.nested_props:
            raise ConfigError(f"withheld_combos={self.withheld_combos!r} needs nested_props too")


# EvalSection fields copied to EvalOptions under the same name (resource paths and the skip switch)
_SECTION_FIELDS = ("scibert_vocab", "wordnet_dir", "nested_props", "withheld_combos")


def eval_options_from_config(eval_section: Any, **overrides: Any) -> EvalOptions:
    """EvalOptions from a RunConfig's ``eval`` section, then ``overrides`` (EvalOptions fields).

    ``fingerprint_averaging: both`` gives the molt5 headline (both averagings are always reported
    as ``*_molt5`` / ``*_lpm24``); the resource paths and ``skip_unavailable`` are passed through.
    An override whose value is None keeps the section's value (the "not given" of a CLI flag).
    """
    averaging = eval_section.fingerprint_averaging
    values: dict[str, Any] = {
        "fingerprint_averaging": "molt5" if averaging == "both" else averaging,
        "skip_unavailable": eval_section.skip_unavailable,
    }
    values.update({name: getattr(eval_section, name) for name in _SECTION_FIELDS})
    known = {f.name for f in fields(EvalOptions)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"overrides {unknown} are not EvalOptions fields ({sorted(known)})")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return EvalOptions(**values)
