"""Self-generated preference triplets (the ALMA-R way, with chemistry metrics).

For each gold pair (source, gold, direction) the model samples K candidates; each candidate is
scored against the gold with a configurable metric per direction, and the rejected response is
picked by a policy (chosen = gold):
- ``worst``: the lowest-scoring non-empty candidate;
- ``near_miss``: the highest-scoring candidate that is not equivalent to the gold (same InChI for
  molecules, same normalised text for captions: ``common.equivalent``) — a hard negative.
When no candidate qualifies the first candidate is kept as the rejected, so that
``common.filter_rows`` drops and counts the row (empty / equivalent) like every other builder.
The rows' ``score`` is the picked candidate's metric score and ``score_name`` the metric.

Metrics (all in [0, 1], 1 = identical): molecules ``morgan_fts`` (invalid SMILES = 0), ``exact``
(InChI match), ``chrf``, ``levenshtein`` (1 - edit distance / longer length); captions ``bleu``
(sacrebleu sentence BLEU), ``chrf``, ``meteor`` (the evaluator's nltk METEOR on SciBERT tokens).

CLI: ``python -m almol_jax.preferences self-generated --checkpoint RUN_DIR ... --out FILE``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from almol_jax.directions import DIRECTIONS
from almol_jax.errors import ConfigError
from almol_jax.preferences.common import (
    PreferenceRow,
    canonical_inchi,
    equivalent,
    filter_rows,
    format_summary,
    is_empty,
    morgan_fts,
    sentence_bleu,
    subsample,
    summarise,
    write_rows,
    write_summary,
)

POLICIES = ("worst", "near_miss")
MOLECULE_METRICS = ("morgan_fts", "exact", "chrf", "levenshtein")
CAPTION_METRICS = ("bleu", "chrf", "meteor")
DEFAULT_METRICS = {"caption2smiles": "morgan_fts", "smiles2caption": "bleu"}


# --------------------------------------------------------------------------- metrics


def _chrf(reference: str, output: str) -> float:
    from sacrebleu.metrics import CHRF

    return float(CHRF().sentence_score(output, [reference]).score) / 100.0


def _exact(reference: str, output: str) -> float:
    ref, out = canonical_inchi(reference), canonical_inchi(output)
    return float(ref is not None and ref == out)


def _levenshtein(reference: str, output: str) -> float:
    import Levenshtein

    longest = max(len(reference), len(output))
    return 1.0 - Levenshtein.distance(reference, output) / longest if longest else 1.0


def _morgan(reference: str, output: str) -> float:
    value = morgan_fts(reference, output)
    return 0.0 if value is None else value


def _bleu(reference: str, output: str) -> float:
    return sentence_bleu(reference, output)


@functools.lru_cache(maxsize=1)
def _meteor_parts():
    from almol_jax.eval.resources import find_scibert_vocab, find_wordnet
    from almol_jax.eval.text import MeteorScorer, WordPiece

    return WordPiece(find_scibert_vocab()), MeteorScorer(find_wordnet())


def _meteor(reference: str, output: str) -> float:
    wordpiece, meteor = _meteor_parts()
    return meteor(wordpiece.metric_tokens(reference), wordpiece.metric_tokens(output))


_METRICS: dict[str, Callable[[str, str], float]] = {
    "morgan_fts": _morgan,
    "exact": _exact,
    "chrf": _chrf,
    "levenshtein": _levenshtein,
    "bleu": _bleu,
    "meteor": _meteor,
}


def metric_fn(direction: str, name: str) -> Callable[[str, str], float]:
    """The scoring function `(gold, candidate) -> [0, 1]` of a metric valid for `direction`."""
    allowed = MOLECULE_METRICS if direction == "caption2smiles" else CAPTION_METRICS
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r} is not one of {DIRECTIONS}")
    if name not in allowed:
        raise ValueError(f"metric {name!r} is not available for {direction}; choose from {allowed}")
    return _METRICS[name]


# --------------------------------------------------------------------------- selection


@dataclasses.dataclass(frozen=True)
class Pick:
    """The candidate chosen as rejected for one source, with what it was chosen from."""

    rejected: str
    score: float | None
    candidates: int
    distinct: int
    equivalent: int
    empty: int


def pick_rejected(
    gold: str,
    candidates: Sequence[str],
    direction: str,
    *,
    policy: str,
    score: Callable[[str, str], float],
) -> Pick:
    """Applies `policy` (see the module docstring) to one source's candidates."""
    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r} is not one of {POLICIES}")
    if not candidates:
        raise ValueError("pick_rejected needs at least one candidate")
    distinct = list(dict.fromkeys(candidates))
    empty = [c for c in distinct if is_empty(c)]
    same = {c for c in distinct if not is_empty(c) and equivalent(gold, c, direction)}
    scored = {c: score(gold, c) for c in distinct if not is_empty(c)}
    if policy == "worst":
        pool = [c for c in distinct if c in scored]
        choice = min(pool, key=lambda c: scored[c]) if pool else None
    else:
        pool = [c for c in distinct if c in scored and c not in same]
        choice = max(pool, key=lambda c: scored[c]) if pool else None
    if choice is None:  # nothing qualifies: filter_rows drops and counts the row
        choice = candidates[0]
    return Pick(
        rejected=choice,
        score=None if choice not in scored else round(scored[choice], 6),
        candidates=len(candidates),
        distinct=len(distinct),
        equivalent=sum(candidates.count(c) for c in same),
        empty=sum(candidates.count(c) for c in empty),
    )


# --------------------------------------------------------------------------- builder


def build_self_generated(
    model,
    tokenizer,
    examples: Sequence[tuple[str, str, str]],
    *,
    templates: Any,
    settings: Any,
    key: Any,
    num_candidates: int = 4,
    policy: str = "near_miss",
    metrics: dict[str, str] | None = None,
    adapters: bool = True,
    add_bos: bool = True,
    system: str = "self",
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[list[PreferenceRow], dict]:
    """Triplets (chosen = gold, rejected = a sampled candidate) and the summary dict.

    `examples` are (source, gold, direction); `settings` a DecodeSettings (normally
    method="sample"); `key` the PRNG key of the sampling; `metrics` {direction: metric name}.
    """
    from almol_jax.data.prompts import format_prompt
    from almol_jax.generation import generate_texts

    if num_candidates < 1:
        raise ValueError(f"num_candidates={num_candidates} must be >= 1")
    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r} is not one of {POLICIES}")
    if settings.method == "greedy" and num_candidates > 1:
        raise ValueError(
            f"num_candidates={num_candidates} with method='greedy' gives identical candidates; "
            "use method='sample'"
        )
    metrics = {**DEFAULT_METRICS, **(metrics or {})}
    scorers = {d: metric_fn(d, metrics[d]) for d in DIRECTIONS}
    prompts = [
        format_prompt(templates, direction, source, tokenizer)
        for source, _gold, direction in examples
        for _ in range(num_candidates)
    ]
    outputs = generate_texts(
        model,
        tokenizer,
        prompts,
        settings,
        key=key,
        adapters=adapters,
        add_bos=add_bos,
        on_batch=on_batch,
    )
    triplets, stats = (
        [],
        {d: {"candidates": 0, "distinct": 0, "equivalent": 0, "empty": 0} for d in DIRECTIONS},
    )
    for i, (source, gold, direction) in enumerate(examples):
        candidates = outputs[i * num_candidates : (i + 1) * num_candidates]
        pick = pick_rejected(gold, candidates, direction, policy=policy, score=scorers[direction])
        for name in stats[direction]:
            stats[direction][name] += getattr(pick, name)
        triplets.append(
            PreferenceRow(
                source,
                gold,
                pick.rejected,
                direction,
                source_system=system,
                score=pick.score,
                score_name=metrics[direction],
            )
        )
    kept, counts = filter_rows(triplets)
    summary = summarise(
        counts,
        kept,
        builder="self_generated",
        system=system,
        policy=policy,
        num_candidates=num_candidates,
        metrics=metrics,
        decoding={
            "method": settings.method,
            "temperature": settings.temperature,
            "top_k": settings.top_k,
            "top_p": settings.top_p,
            "max_new_tokens": settings.max_new_tokens,
        },
        candidates=stats,
    )
    for d in DIRECTIONS:
        summary["per_direction"][d]["score_name"] = metrics[d]
    return kept, summary


def gold_examples(
    cfg: Any, split: str, *, fraction: float = 1.0, seed: int = 0, limit: int | None = None
) -> list[tuple[str, str, str]]:
    """Distinct (source, gold, direction) of a config split; pairs subsampled with `seed` at the
    (molecule, caption) level (both directions of a sampled pair stay), then the first `limit`."""
    from almol_jax.data.report import DataReport
    from almol_jax.data.sources import load_examples

    rows = load_examples(cfg.data, split, DataReport())
    distinct = list(dict.fromkeys((ex.source, ex.chosen, ex.direction) for ex in rows))

    def pair(row):
        source, gold, direction = row
        return (source, gold) if direction == "smiles2caption" else (gold, source)

    sampled = subsample([pair(r) for r in distinct], fraction, seed)
    out = [r for r in distinct if pair(r) in sampled]
    return out if limit is None else out[:limit]


def build_from_checkpoint(
    checkpoint: str | Path,
    *,
    cfg: Any = None,
    split: str = "train",
    num_candidates: int = 4,
    policy: str = "near_miss",
    metrics: dict[str, str] | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    max_new_tokens: int | None = None,
    fraction: float = 1.0,
    seed: int | None = None,
    limit: int | None = None,
    adapters: bool = True,
    step: str | int = "best",
    allow_other_base: bool = False,
) -> tuple[list[PreferenceRow], dict]:
    """Restores a run and builds self-generated triplets for a split of `cfg` (default: the run's
    own config). The sampling key is the "sampling" key of `seed` (default cfg.seed)."""
    from almol_jax.generation import settings_from_config
    from almol_jax.run.restore import load_for_eval
    from almol_jax.seeds import seed_keys

    run_cfg, model, tokenizer, run_dir, chosen, use_adapters = load_for_eval(
        checkpoint, adapters=adapters, step=step, allow_other_base=allow_other_base
    )
    cfg = run_cfg if cfg is None else cfg
    seed = cfg.seed if seed is None else seed
    # one call decodes both directions' prompts: no SMILES grammar (it would bind captions too)
    changes = dict(method="sample", temperature=temperature, top_k=top_k, top_p=top_p)
    changes["smiles_grammar"] = False
    if max_new_tokens is not None:
        changes["max_new_tokens"] = max_new_tokens
    settings = settings_from_config(cfg, **changes)
    examples = gold_examples(cfg, split, fraction=fraction, seed=seed, limit=limit)
    if not examples:
        raise ConfigError(f"split {split!r} of the config has no rows to build preferences from")
    rows, summary = build_self_generated(
        model,
        tokenizer,
        examples,
        templates=cfg.data.templates,
        settings=settings,
        key=seed_keys(seed)["sampling"],
        num_candidates=num_candidates,
        policy=policy,
        metrics=metrics,
        adapters=use_adapters,
        add_bos=cfg.tokenizer.add_bos,
        system=f"self:{run_dir.name}@{chosen}",
    )
    summary.update(checkpoint=str(run_dir), step=chosen, split=split, seed=seed, fraction=fraction)
    return rows, summary


# --------------------------------------------------------------------------- CLI


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``self-generated`` sub-command."""
    p = subparsers.add_parser(
        "self-generated",
        help="triplets from a checkpoint's own samples (chosen = gold, rejected by policy)",
        description=(
            "Sample K candidates per source from a trained checkpoint, score each against the gold "
            "with a metric per direction, pick the rejected by policy (worst, or near_miss: the "
            "best candidate not equivalent to the gold); chosen = gold. Writes JSONL/CSV rows and a "
            "JSON summary like from-predictions."
        ),
    )
    p.add_argument(
        "--checkpoint", required=True, help="run directory or <run_dir>/checkpoints/<step>"
    )
    p.add_argument("--config", default=None, help="config YAML for the data (default: the run's)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    p.add_argument("--split", default="train", choices=("train", "validation", "test"))
    p.add_argument("--k", type=int, default=4, help="candidates sampled per source")
    p.add_argument("--policy", default="near_miss", choices=POLICIES)
    p.add_argument("--molecule-metric", default="morgan_fts", choices=MOLECULE_METRICS)
    p.add_argument("--caption-metric", default="bleu", choices=CAPTION_METRICS)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--fraction", type=float, default=1.0, help="share of gold pairs kept")
    p.add_argument(
        "--seed", type=int, default=None, help="sampling/subsampling seed (default: cfg.seed)"
    )
    p.add_argument("--limit", type=int, default=None, help="first N sources")
    p.add_argument("--adapters", default="on", choices=("on", "off"))
    p.add_argument(
        "--allow-other-base",
        action="store_true",
        help="load the adapters even onto a base they were not trained on (refused by default)",
    )
    p.add_argument("--out", required=True, help="output file, .jsonl or .csv")
    p.add_argument("--report", default=None, help="summary JSON (default: OUT.summary.json)")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    """Run ``self-generated`` with parsed arguments."""
    from almol_jax.config import load_config

    cfg = load_config(args.config, args.set) if args.config else None
    rows, summary = build_from_checkpoint(
        args.checkpoint,
        cfg=cfg,
        split=args.split,
        num_candidates=args.k,
        policy=args.policy,
        metrics={"caption2smiles": args.molecule_metric, "smiles2caption": args.caption_metric},
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        fraction=args.fraction,
        seed=args.seed,
        limit=args.limit,
        adapters=args.adapters == "on",
        allow_other_base=args.allow_other_base,
    )
    out = write_rows(rows, args.out)
    report = Path(args.report) if args.report else out.with_suffix(".summary.json")
    summary["output"] = str(out)
    write_summary(summary, report)
    print(format_summary(summary))
    print(f"wrote {len(rows)} triplets to {out} and the summary to {report}")
    return 0
