"""Host-side evaluation of language<->molecule translations (the community scorers' metrics).

Public API (imported lazily: ``import almol_jax.eval`` loads no RDKit, nltk or torch):
- ``score_caption2smiles(sources, references, outputs, *, options) -> (metrics, per_row)``
- ``score_smiles2caption(sources, references, outputs, *, options) -> (metrics, per_row)``
- ``score(task, sources, references, outputs, *, options) -> (metrics, per_row, resources)``
- ``write_report(output_dir, task, metrics, per_row, resources)``
- ``read_predictions(path, task=None) -> Predictions``; ``EvalOptions``; ``Resources``.
- ``eval_options_from_config(eval_section, **overrides) -> EvalOptions`` (a RunConfig's eval).
See docs/evaluation.md for metric definitions and parity figures.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EvalOptions": "almol_jax.eval.options",
    "eval_options_from_config": "almol_jax.eval.options",
    "score": "almol_jax.eval.scoring",
    "score_caption2smiles": "almol_jax.eval.molecule_scoring",
    "score_smiles2caption": "almol_jax.eval.caption_scoring",
    "write_report": "almol_jax.eval.report",
    "format_table": "almol_jax.eval.report",
    "read_predictions": "almol_jax.eval.io",
    "Predictions": "almol_jax.eval.io",
    "PredictionFileError": "almol_jax.eval.io",
    "Resources": "almol_jax.eval.resources",
    "MissingResourceError": "almol_jax.eval.resources",
    "ChrfConfig": "almol_jax.eval.chrf",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'almol_jax.eval' has no attribute {name!r}")
