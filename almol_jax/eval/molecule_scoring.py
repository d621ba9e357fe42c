"""caption2smiles scoring: `score_caption2smiles` turns (caption, reference SMILES, output SMILES)
rows into the corpus metrics and one report row each.

Workers compute each row's values (`_c2s_chunk`: RDKit metrics, Levenshtein, chrF, BLEU
statistics, SMILES token counts, canonical SMILES) and return them as a `_MoleculeRow`; the
corpus metrics are then pooled here from those fields (BLEU and chrF from summed statistics).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from almol_jax.eval import bleu as bleu_lib
from almol_jax.eval import molecule
from almol_jax.eval.chrf import batch_row_chrf, corpus_chrf_from_stats
from almol_jax.eval.io import check_rows, row_records
from almol_jax.eval.length_bias import length_stats
from almol_jax.eval.options import EvalOptions
from almol_jax.eval.parallel import map_chunks
from almol_jax.eval.resources import Resources


class _MoleculeRow(NamedTuple):
    """What a worker computes for one (reference, output) row."""

    values: dict[str, Any]  # the report's per-row metrics (molecule metrics, levenshtein, chrf)
    canonical: tuple[str | None, str | None]  # canonical (reference, output): FCD's inputs
    chrf_stats: Any  # chrF sufficient statistics (corpus chrF)
    bleu_stats: Any  # character BLEU statistics (corpus BLEU)
    tokens: tuple[int, int]  # SMILES tokens of (reference, output)


def _c2s_chunk(state, rows) -> list[_MoleculeRow]:
    """Per-row caption2smiles values of a chunk of (reference, output) rows (in a worker)."""
    morgan_radius, chrf_config, canonical, known = state
    import Levenshtein

    refs = [ref for ref, _ in rows]
    hyps = [hyp for _, hyp in rows]
    values, canonical_pairs = molecule.pair_metrics(rows, morgan_radius, canonical, known)
    chrf = batch_row_chrf(chrf_config.metric(), refs, hyps)
    # Character BLEU counts the raw strings' n-grams, chrF the whitespace-free ones: the same
    # overlaps for strings without whitespace (SMILES), so reuse chrF's where both agree.
    reuse = chrf_config.word_order == 0 and chrf_config.char_order >= bleu_lib.MAX_ORDER
    redo = [
        i
        for i, (ref, hyp) in enumerate(rows)
        if not (reuse and "".join(ref.split()) == ref and "".join(hyp.split()) == hyp)
    ]
    bleu = [None] * len(rows)
    redone = bleu_lib.batch_row_stats([refs[i] for i in redo], [hyps[i] for i in redo])
    for i, stats in zip(redo, redone, strict=True):
        bleu[i] = stats
    out = []
    for i, (row, (ref, hyp)) in enumerate(zip(values, rows, strict=True)):
        row["levenshtein"] = Levenshtein.distance(hyp, ref)
        row["chrf"], chrf_stats = chrf[i]
        bleu_stats = bleu[i] or bleu_lib.stats_from_overlaps(
            chrf_stats[2 : 3 * bleu_lib.MAX_ORDER : 3], len(hyp), len(ref)
        )
        tokens = (molecule.smiles_token_count(ref), molecule.smiles_token_count(hyp))
        out.append(_MoleculeRow(row, canonical_pairs[i], chrf_stats, bleu_stats, tokens))
    return out


def _features_chunk(morgan_radius: int, smiles: list[str]) -> list:
    """Every feature of each SMILES string of a chunk (in a worker)."""
    return [molecule.smiles_features(s, morgan_radius, canonical=True) for s in smiles]


def reference_features(references: Sequence[str], options: EvalOptions) -> dict:
    """{reference SMILES: MolFeatures} of the distinct references, from the reference cache
    (computed in worker processes the first time a test set is seen)."""
    from rdkit import __version__ as rdkit_version

    from almol_jax.eval.reference_cache import cached

    def compute(distinct: list[str]) -> dict:
        feats = map_chunks(
            _features_chunk,
            distinct,
            state=options.morgan_radius,
            num_workers=options.num_workers,
            start_method=options.start_method,
        )
        return dict(zip(distinct, feats, strict=True))

    settings = {"rdkit": rdkit_version, "morgan_radius": options.morgan_radius}
    return cached(
        "caption2smiles",
        references,
        settings,
        compute,
        molecule.encode_features,
        molecule.decode_features,
    )


def _fcd(options: EvalOptions, resources: Resources, want_fcd: bool, computed) -> float:
    """FCD of the canonical (reference, output) pairs, or NaN with the reason recorded."""
    if not options.fcd:
        resources.skipped["fcd"] = "disabled (--no-fcd)"
        return float("nan")
    if not want_fcd:
        resources.skipped["fcd"] = "fcd_torch is not installed (pip install fcd_torch==1.0.7)"
        return float("nan")
    from almol_jax.eval.fcd import fcd_score

    canon = [r.canonical for r in computed]
    return fcd_score([c[0] for c in canon], [c[1] for c in canon], device=options.fcd_device)


def score_caption2smiles(
    sources: Sequence[str] | None,
    references: Sequence[str],
    outputs: Sequence[str],
    *,
    options: EvalOptions | None = None,
    resources: Resources | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Molecule-generation metrics of N (caption, reference SMILES, output SMILES) rows.

    Returns ``(metrics, per_row)``. ``resources`` (optional) is filled with what was used and
    skipped. Keys: bleu, exact_match, levenshtein, validity, maccs_fts, rdk_fts, morgan_fts
    (``options.fingerprint_averaging``), the same three FTS under ``*_molt5`` / ``*_lpm24``,
    uniqueness, fcd, chrf (corpus), chrf_sentence_mean, n, length_* and corr_*.
    """
    options = options or EvalOptions()
    resources = resources if resources is not None else Resources()
    n = check_rows(sources, references, outputs)
    want_fcd = False
    if options.fcd:
        from almol_jax.eval.fcd import fcd_available

        want_fcd = fcd_available()
    computed: list[_MoleculeRow] = map_chunks(
        _c2s_chunk,
        list(zip(references, outputs, strict=True)),
        state=(
            options.morgan_radius,
            options.chrf,
            want_fcd,
            reference_features(references, options) if options.reference_cache and n else None,
        ),
        num_workers=options.num_workers,
        progress=options.progress,
        desc="caption2smiles",
        start_method=options.start_method,
    )
    values = [r.values for r in computed]
    nan = float("nan")
    metrics: dict[str, float] = {"n": n}
    stats = [r.bleu_stats for r in computed]
    metrics["bleu"] = bleu_lib.corpus_bleu_from_stats(stats) if n else nan
    metrics["exact_match"] = float(np.mean([r["exact_match"] for r in values])) if n else nan
    metrics["levenshtein"] = float(np.mean([r["levenshtein"] for r in values])) if n else nan
    metrics["validity"] = float(np.mean([r["valid"] for r in values])) if n else nan
    for mode in ("molt5", "lpm24"):
        for key, value in molecule.aggregate_fts(values, mode).items():
            metrics[f"{key}_{mode}"] = value
    for key in molecule.FTS_KEYS:
        metrics[key] = metrics[f"{key}_{options.fingerprint_averaging}"]
    metrics["uniqueness"] = molecule.uniqueness(outputs, [r["output_valid"] for r in values])
    metrics["fcd"] = _fcd(options, resources, want_fcd, computed)
    chrf_stats = [r.chrf_stats for r in computed]
    metrics["chrf"] = corpus_chrf_from_stats(options.chrf.metric(), chrf_stats)
    metrics["chrf_sentence_mean"] = float(np.mean([r["chrf"] for r in values])) if n else nan
    tokens = [{"ref_tokens": row.tokens[0], "out_tokens": row.tokens[1]} for row in computed]
    per_row = row_records(sources, references, outputs, [row.values for row in computed], tokens)
    metrics.update(
        length_stats(
            {
                "tokens": ([r["ref_tokens"] for r in per_row], [r["out_tokens"] for r in per_row]),
                "chars": ([r["ref_chars"] for r in per_row], [r["out_chars"] for r in per_row]),
            },
            {k: [r[k] for r in per_row] for k in ("morgan_fts", "levenshtein", "chrf")},
        )
    )
    return metrics, per_row
