"""The library entry points: score a list of (source, reference, output) rows for one task.

``score_caption2smiles`` and ``score_smiles2caption`` return ``(metrics, per_row)``: a flat
dict of corpus metrics (keys documented in docs/evaluation.md) and one dict per row. Pass a
:class:`Resources` to have it filled with what was used (versions, vocab hash, WordNet source)
and skipped; :func:`score` does that for you and returns it as a third value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from almol_jax.eval import bleu as bleu_lib
from almol_jax.eval import molecule
from almol_jax.eval.chrf import ChrfConfig, batch_row_chrf, corpus_chrf_from_stats
from almol_jax.eval.length_bias import length_stats
from almol_jax.eval.parallel import ChunkMap, default_start_method, map_chunks
from almol_jax.eval.resources import MissingResourceError, Resources


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

    def __post_init__(self):
        if self.fingerprint_averaging not in ("molt5", "lpm24"):
            raise ValueError(
                f"fingerprint_averaging={self.fingerprint_averaging!r} is not 'molt5' or 'lpm24'"
            )
        if self.morgan_radius < 0:
            raise ValueError(f"morgan_radius={self.morgan_radius} must be >= 0")
        if self.text_trunc_length < 1:
            raise ValueError(f"text_trunc_length={self.text_trunc_length} must be >= 1")
        if self.num_workers is not None and self.num_workers < 1:
            raise ValueError(f"num_workers={self.num_workers} must be >= 1")
        if self.withheld_combos and not self.nested_props:
            raise ValueError(f"withheld_combos={self.withheld_combos!r} needs nested_props too")


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


def _check_rows(sources, references, outputs) -> int:
    n = len(outputs)
    if len(references) != n or (sources is not None and len(sources) != n):
        lens = (None if sources is None else len(sources), len(references), n)
        raise ValueError(f"sources/references/outputs lengths differ: {lens}")
    for name, seq in (("references", references), ("outputs", outputs)):
        for i, value in enumerate(seq):
            if not isinstance(value, str):
                raise TypeError(f"{name}[{i}]={value!r:.80} is not a str")
    return n


# ---------------------------------------------------------------- caption2smiles


def _c2s_chunk(state, rows):
    """Per-row caption2smiles values of a chunk of (reference, output) rows (in a worker)."""
    morgan_radius, chrf_config, canonical = state
    import Levenshtein

    refs = [ref for ref, _ in rows]
    hyps = [hyp for _, hyp in rows]
    out = molecule.pair_metrics(rows, morgan_radius, canonical)
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
    for i, (row, (ref, hyp)) in enumerate(zip(out, rows, strict=True)):
        row["levenshtein"] = Levenshtein.distance(hyp, ref)
        row["chrf"], row["_chrf"] = chrf[i]
        row["_bleu"] = bleu[i] or bleu_lib.stats_from_overlaps(
            row["_chrf"][2 : 3 * bleu_lib.MAX_ORDER : 3], len(hyp), len(ref)
        )
        row["_tokens"] = (molecule.smiles_token_count(ref), molecule.smiles_token_count(hyp))
    return out


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
    n = _check_rows(sources, references, outputs)
    want_fcd = False
    if options.fcd:
        from almol_jax.eval.fcd import fcd_available

        want_fcd = fcd_available()
    rows = map_chunks(
        _c2s_chunk,
        list(zip(references, outputs, strict=True)),
        state=(options.morgan_radius, options.chrf, want_fcd),
        num_workers=options.num_workers,
        progress=options.progress,
        desc="caption2smiles",
        start_method=options.start_method,
    )
    nan = float("nan")
    metrics: dict[str, float] = {"n": n}
    metrics["bleu"] = bleu_lib.corpus_bleu_from_stats([r.pop("_bleu") for r in rows]) if n else nan
    metrics["exact_match"] = float(np.mean([r["exact_match"] for r in rows])) if n else nan
    metrics["levenshtein"] = float(np.mean([r["levenshtein"] for r in rows])) if n else nan
    metrics["validity"] = float(np.mean([r["valid"] for r in rows])) if n else nan
    for mode in ("molt5", "lpm24"):
        for key, value in molecule.aggregate_fts(rows, mode).items():
            metrics[f"{key}_{mode}"] = value
    for key in molecule.FTS_KEYS:
        metrics[key] = metrics[f"{key}_{options.fingerprint_averaging}"]
    metrics["uniqueness"] = molecule.uniqueness(outputs, [r["output_valid"] for r in rows])
    canon = [r.pop("_canon", (None, None)) for r in rows]
    metrics["fcd"] = nan
    if options.fcd:
        from almol_jax.eval.fcd import fcd_score

        if want_fcd:
            metrics["fcd"] = fcd_score(
                [c[0] for c in canon], [c[1] for c in canon], device=options.fcd_device
            )
        else:
            resources.skipped["fcd"] = "fcd_torch is not installed (pip install fcd_torch==1.0.7)"
    else:
        resources.skipped["fcd"] = "disabled (--no-fcd)"
    metrics["chrf"] = corpus_chrf_from_stats(options.chrf.metric(), [r.pop("_chrf") for r in rows])
    metrics["chrf_sentence_mean"] = float(np.mean([r["chrf"] for r in rows])) if n else nan
    for i, (src, ref, hyp) in enumerate(zip(sources or [""] * n, references, outputs, strict=True)):
        ref_tokens, out_tokens = rows[i].pop("_tokens")
        rows[i] = {
            "row": i,
            "source": src,
            "reference": ref,
            "output": hyp,
            **rows[i],
            "ref_chars": len(ref),
            "out_chars": len(hyp),
            "ref_tokens": ref_tokens,
            "out_tokens": out_tokens,
        }
    metrics.update(
        length_stats(
            {
                "tokens": ([r["ref_tokens"] for r in rows], [r["out_tokens"] for r in rows]),
                "chars": ([r["ref_chars"] for r in rows], [r["out_chars"] for r in rows]),
            },
            {k: [r[k] for r in rows] for k in ("morgan_fts", "levenshtein", "chrf")},
        )
    )
    return metrics, rows


# ---------------------------------------------------------------- smiles2caption


def _s2c_chunk(state, rows):
    """Per-row smiles2caption values of a chunk of (reference, output) rows, METEOR aside (in a
    worker): SciBERT tokens, BLEU statistics, ROUGE, chrF."""
    tokenizer, trunc, chrf_config, pieces = state
    from almol_jax.eval.text import rouge_rows

    refs = [ref for ref, _ in rows]
    hyps = [hyp for _, hyp in rows]
    if tokenizer is not None:
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
        row["chrf"], row["_chrf"] = chrf[i]
        row["_bleu"] = bleu[i]
        row["_tokens"] = (ref_tok[i], hyp_tok[i])
        out.append(row)
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
    n = _check_rows(sources, references, outputs)
    outputs = [strip_cls(o) for o in outputs]
    tokenizer = _resolve_tokenizer(options, resources)
    with ChunkMap(
        _s2c_chunk,
        list(zip(references, outputs, strict=True)),
        # The last item: this run's WordPiece memo, one copy per process (never kept).
        state=(tokenizer, options.text_trunc_length, options.chrf, {}),
        num_workers=options.num_workers,
        progress=options.progress,
        desc="smiles2caption",
        start_method=options.start_method,
    ) as work:
        # While the workers tokenize and count: nltk and WordNet load here, the long pole.
        meteor = _resolve_meteor(options, resources) if tokenizer is not None else None
        rows = work.results()
    tokens = [r.pop("_tokens") for r in rows]
    ref_tok, out_tok = [t[0] for t in tokens], [t[1] for t in tokens]
    if meteor is not None:
        # Forked workers inherit the loaded WordNet; other start methods would reload it each.
        forks = (options.start_method or default_start_method()) == "fork"
        values = map_chunks(
            _meteor_chunk,
            list(zip(ref_tok, out_tok, strict=True)),
            state=meteor,
            num_workers=options.num_workers if forks else 1,
            progress=options.progress,
            desc="METEOR",
            start_method=options.start_method,
        )
        for row, value in zip(rows, values, strict=True):
            row["meteor"] = value
    nan = float("nan")
    metrics: dict[str, float] = {"n": n}
    stats = [r.pop("_bleu") for r in rows]
    if tokenizer is not None and n:
        metrics["bleu2"] = bleu_lib.corpus_bleu_from_stats(stats, weights=(0.5, 0.5))
        metrics["bleu4"] = bleu_lib.corpus_bleu_from_stats(stats)
    else:
        metrics["bleu2"] = metrics["bleu4"] = nan
    for key in ("rouge1", "rouge2", "rougeL"):
        metrics[key] = float(np.mean([r[key] for r in rows])) if n else nan
    metrics["meteor"] = (
        float(np.mean([r["meteor"] for r in rows]))
        if (n and meteor is not None and tokenizer)
        else nan
    )
    metrics["chrf"] = corpus_chrf_from_stats(options.chrf.metric(), [r.pop("_chrf") for r in rows])
    metrics["chrf_sentence_mean"] = float(np.mean([r["chrf"] for r in rows])) if n else nan
    prop_rows = None
    if options.nested_props and tokenizer is not None:
        from almol_jax.eval.properties import load_combos, load_nested_props, property_metrics

        combos = load_combos(options.withheld_combos) if options.withheld_combos else None
        prop_metrics, prop_rows = property_metrics(
            tokenizer.tokenize, references, outputs, load_nested_props(options.nested_props), combos
        )
        metrics.update(prop_metrics)
    unit = "tokens" if tokenizer is not None else "words"
    for i, (src, ref, hyp) in enumerate(zip(sources or [""] * n, references, outputs, strict=True)):
        rows[i] = {
            "row": i,
            "source": src,
            "reference": ref,
            "output": hyp,
            **rows[i],
            **(prop_rows[i] if prop_rows else {}),
            "ref_chars": len(ref),
            "out_chars": len(hyp),
            f"ref_{unit}": len(ref_tok[i]),
            f"out_{unit}": len(out_tok[i]),
        }
    metrics.update(
        length_stats(
            {
                unit: ([r[f"ref_{unit}"] for r in rows], [r[f"out_{unit}"] for r in rows]),
                "chars": ([r["ref_chars"] for r in rows], [r["out_chars"] for r in rows]),
            },
            {k: [r[k] for r in rows] for k in ("meteor", "rougeL", "chrf")},
        )
    )
    return metrics, rows


def score(
    task: str,
    sources: Sequence[str] | None,
    references: Sequence[str],
    outputs: Sequence[str],
    *,
    options: EvalOptions | None = None,
) -> tuple[dict[str, float], list[dict], Resources]:
    """``score_<task>`` plus the :class:`Resources` record, for eval.py and reports."""
    from almol_jax.eval.io import check_task

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
