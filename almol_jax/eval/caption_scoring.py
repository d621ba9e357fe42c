"""smiles2caption scoring: `score_smiles2caption` turns (SMILES, reference caption, output caption)
rows into the corpus metrics and one report row each.

Workers tokenize (SciBERT WordPiece) and compute each row's ROUGE, chrF and BLEU statistics
(`_s2c_chunk`, returned as a `_CaptionRow`) while this process loads WordNet; METEOR then runs
over the tokens, and the corpus metrics are pooled here from those fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from almol_jax.eval import bleu as bleu_lib
from almol_jax.eval.chrf import batch_row_chrf, corpus_chrf_from_stats
from almol_jax.eval.io import check_rows, row_records
from almol_jax.eval.length_bias import length_stats
from almol_jax.eval.options import EvalOptions
from almol_jax.eval.parallel import ChunkMap, default_start_method, map_chunks
from almol_jax.eval.resources import MissingResourceError, Resources


class _CaptionRow(NamedTuple):
    """What a worker computes for one (reference, output) row, METEOR aside."""

    values: dict[str, Any]  # the report's per-row metrics (meteor None until scored, ROUGE, chrf)
    chrf_stats: Any  # chrF sufficient statistics (corpus chrF)
    bleu_stats: Any  # BLEU statistics of the SciBERT tokens (None without the tokenizer)
    ref_tokens: list[str]  # SciBERT tokens (whitespace words without the tokenizer)
    out_tokens: list[str]


def _s2c_chunk(state, rows) -> list[_CaptionRow]:
    """Per-row smiles2caption values of a chunk of (reference, output) rows, METEOR aside (in a
    worker): SciBERT tokens, BLEU statistics, ROUGE, chrF."""
    tokenizer, trunc, chrf_config, pieces, known = state
    from almol_jax.eval.text import rouge_rows

    refs = [ref for ref, _ in rows]
    hyps = [hyp for _, hyp in rows]
    if tokenizer is not None:
        if known is not None:  # the reference cache's tokens (reference_tokens)
            ref_tok = [list(known[r]) for r in refs]
        else:
            ref_tok = tokenizer.metric_tokens_many(refs, trunc, pieces)
        hyp_tok = tokenizer.metric_tokens_many(hyps, trunc, pieces)
        bleu = bleu_lib.batch_row_stats(ref_tok, hyp_tok)
    else:  # whitespace tokens only feed the length statistics here
        ref_tok = [r.split() for r in refs]
        hyp_tok = [h.split() for h in hyps]
        bleu = [None] * len(rows)
    chrf = batch_row_chrf(chrf_config.metric(), refs, hyps)
    out = []
    for i, rouge in enumerate(rouge_rows(refs, hyps)):
        row = {"meteor": None, **rouge}
        row["chrf"], chrf_stats = chrf[i]
        out.append(_CaptionRow(row, chrf_stats, bleu[i], ref_tok[i], hyp_tok[i]))
    return out


def _meteor_chunk(meteor, rows):
    """METEOR of a chunk of (reference tokens, output tokens) rows."""
    return [meteor(ref_tok, hyp_tok) for ref_tok, hyp_tok in rows]


def _resolve_tokenizer(options: EvalOptions, resources: Resources):
    """The SciBERT WordPiece, or None (honouring ``skip_unavailable``)."""
    from almol_jax.eval import resources as res
    from almol_jax.eval.text import wordpiece

    try:
        vocab = res.find_scibert_vocab(options.scibert_vocab)
    except MissingResourceError as e:
        if not options.skip_unavailable:
            raise
        resources.skipped.update(dict.fromkeys(("bleu2", "bleu4", "meteor", "props"), str(e)))
        return None
    resources.scibert_vocab = str(vocab)
    resources.scibert_vocab_sha256 = res.sha256_file(vocab)
    return wordpiece(str(vocab))


def _resolve_meteor(options: EvalOptions, resources: Resources):
    """The METEOR scorer with WordNet loaded (nltk import included: ~1.3 s), or None."""
    from almol_jax.eval import resources as res
    from almol_jax.eval.text import meteor_scorer

    try:
        source = res.find_wordnet(options.wordnet_dir)
    except MissingResourceError as e:
        if not options.skip_unavailable:
            raise
        resources.skipped["meteor"] = str(e)
        return None
    meteor = meteor_scorer(source)
    resources.wordnet_source = source.source
    resources.wordnet_version = meteor.wordnet_version
    return meteor


def reference_tokens(references, tokenizer, options: EvalOptions, resources: Resources) -> dict:
    """{reference caption: its SciBERT metric tokens}, from the reference cache."""
    from almol_jax.eval.reference_cache import cached

    def compute(distinct: list[str]) -> dict:
        tokens = tokenizer.metric_tokens_many(distinct, options.text_trunc_length, {})
        return dict(zip(distinct, tokens, strict=True))

    settings = {
        "scibert_vocab_sha256": resources.scibert_vocab_sha256,
        "text_trunc_length": options.text_trunc_length,
    }
    return cached("smiles2caption", references, settings, compute)


def _computed_rows(references, outputs, options: EvalOptions, resources: Resources):
    """(per-row values, the tokenizer or None, the METEOR scorer or None): workers tokenize and
    count while this process loads WordNet, then METEOR fills each row's "meteor"."""
    tokenizer = _resolve_tokenizer(options, resources)
    with ChunkMap(
        _s2c_chunk,
        list(zip(references, outputs, strict=True)),
        # The WordPiece memo of this run, one copy per process (never kept), then the
        # references' tokens from the reference cache (None: tokenized here).
        state=(
            tokenizer,
            options.text_trunc_length,
            options.chrf,
            {},
            reference_tokens(references, tokenizer, options, resources)
            if tokenizer is not None and options.reference_cache and references
            else None,
        ),
        num_workers=options.num_workers,
        progress=options.progress,
        desc="smiles2caption",
        start_method=options.start_method,
    ) as work:
        # While the workers tokenize and count: nltk and WordNet load here, the long pole.
        meteor = _resolve_meteor(options, resources) if tokenizer is not None else None
        computed: list[_CaptionRow] = work.results()
    if meteor is not None:
        # Forked workers inherit the loaded WordNet; other start methods would reload it each.
        forks = (options.start_method or default_start_method()) == "fork"
        scores = map_chunks(
            _meteor_chunk,
            [(r.ref_tokens, r.out_tokens) for r in computed],
            state=meteor,
            num_workers=options.num_workers if forks else 1,
            progress=options.progress,
            desc="METEOR",
            start_method=options.start_method,
        )
        for row, value in zip(computed, scores, strict=True):
            row.values["meteor"] = value
    return computed, tokenizer, meteor


def score_smiles2caption(
    sources: Sequence[str] | None,
    references: Sequence[str],
    outputs: Sequence[str],
    *,
    options: EvalOptions | None = None,
    resources: Resources | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Captioning metrics of N (SMILES, reference caption, output caption) rows.

    Keys: bleu2, bleu4, meteor (SciBERT tokens), rouge1, rouge2, rougeL (raw strings),
    chrf (corpus), chrf_sentence_mean, n, length_*, corr_*, and with ``options.nested_props``
    the L+M-24 props_* (and combo_* with ``options.withheld_combos``).
    """
    from almol_jax.eval.text import strip_cls

    options = options or EvalOptions()
    resources = resources if resources is not None else Resources()
    n = check_rows(sources, references, outputs)
    outputs = [strip_cls(o) for o in outputs]
    computed, tokenizer, meteor = _computed_rows(references, outputs, options, resources)
    values = [r.values for r in computed]
    nan = float("nan")
    metrics: dict[str, float] = {"n": n}
    stats = [r.bleu_stats for r in computed]
    if tokenizer is not None and n:
        metrics["bleu2"] = bleu_lib.corpus_bleu_from_stats(stats, weights=(0.5, 0.5))
        metrics["bleu4"] = bleu_lib.corpus_bleu_from_stats(stats)
    else:
        metrics["bleu2"] = metrics["bleu4"] = nan
    for key in ("rouge1", "rouge2", "rougeL"):
        metrics[key] = float(np.mean([r[key] for r in values])) if n else nan
    metrics["meteor"] = (
        float(np.mean([r["meteor"] for r in values]))
        if (n and meteor is not None and tokenizer)
        else nan
    )
    chrf_stats = [r.chrf_stats for r in computed]
    metrics["chrf"] = corpus_chrf_from_stats(options.chrf.metric(), chrf_stats)
    metrics["chrf_sentence_mean"] = float(np.mean([r["chrf"] for r in values])) if n else nan
    prop_rows = None
    if options.nested_props and tokenizer is not None:
        from almol_jax.eval.properties import load_combos, load_nested_props, property_metrics

        combos = load_combos(options.withheld_combos) if options.withheld_combos else None
        prop_metrics, prop_rows = property_metrics(
            tokenizer.tokenize, references, outputs, load_nested_props(options.nested_props), combos
        )
        metrics.update(prop_metrics)
    unit = "tokens" if tokenizer is not None else "words"
    lengths = [
        {f"ref_{unit}": len(row.ref_tokens), f"out_{unit}": len(row.out_tokens)} for row in computed
    ]
    values = [row.values for row in computed]
    per_row = row_records(sources, references, outputs, values, lengths, prop_rows)
    metrics.update(
        length_stats(
            {
                unit: ([r[f"ref_{unit}"] for r in per_row], [r[f"out_{unit}"] for r in per_row]),
                "chars": ([r["ref_chars"] for r in per_row], [r["out_chars"] for r in per_row]),
            },
            {k: [r[k] for r in per_row] for k in ("meteor", "rougeL", "chrf")},
        )
    )
    return metrics, per_row
