"""The library entry point: score a list of (source, reference, output) rows for one task.

``score(task, sources, references, outputs, options=...)`` dispatches to the task's scorer
(``score_caption2smiles`` in `molecule_scoring`, ``score_smiles2caption`` in `caption_scoring`;
both return ``(metrics, per_row)``: a flat dict of corpus metrics, keys documented in
docs/evaluation.md, and one dict per row) and returns the :class:`Resources` record (versions,
vocab hash, WordNet source, what was skipped) as a third value. Options: `options.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

from almol_jax.eval.caption_scoring import score_smiles2caption
from almol_jax.eval.io import check_task
from almol_jax.eval.molecule_scoring import score_caption2smiles
from almol_jax.eval.options import EvalOptions
from almol_jax.eval.resources import Resources


def score(
    task: str,
    sources: Sequence[str] | None,
    references: Sequence[str],
    outputs: Sequence[str],
    *,
    options: EvalOptions | None = None,
) -> tuple[dict[str, float], list[dict], Resources]:
    """``score_<task>`` plus the :class:`Resources` record, for eval.py and reports."""
    check_task(task)
    options = options or EvalOptions()
    resources = Resources()
    resources.settings = {
        "task": task,
        "fingerprint_averaging": options.fingerprint_averaging,
        "morgan_radius": options.morgan_radius,
        "chrf": options.chrf.label,
        "text_trunc_length": options.text_trunc_length,
    }
    fn = score_caption2smiles if task == "caption2smiles" else score_smiles2caption
    metrics, per_row = fn(sources, references, outputs, options=options, resources=resources)
    _record_unused_resources(options, resources)
    return metrics, per_row, resources


def _record_unused_resources(options: EvalOptions, resources: Resources) -> None:
    """Best effort: name the vocab (with sha256) and WordNet even where the task did not use
    them, so every report carries them; a missing one is recorded as such, never an error."""
    from almol_jax.eval import resources as res

    if resources.scibert_vocab is None:
        try:
            vocab = res.find_scibert_vocab(options.scibert_vocab)
            resources.scibert_vocab = str(vocab)
            resources.scibert_vocab_sha256 = res.sha256_file(vocab)
        except res.MissingResourceError:
            resources.scibert_vocab = "not found"
    if resources.wordnet_source is None:
        try:
            resources.wordnet_source = res.find_wordnet(options.wordnet_dir).source
        except res.MissingResourceError:
            resources.wordnet_source = "not found"
