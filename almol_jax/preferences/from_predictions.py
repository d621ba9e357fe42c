"""Preference triplets from another system's predictions (the ALMol recipe: chosen = gold,
rejected = e.g. MolT5-large's greedy output), read from scorer-format TSV files.

A prediction file has the header ``SMILES<TAB>ground truth<TAB>output`` (smiles2caption: source
SMILES, gold caption, output caption) or ``description<TAB>ground truth<TAB>output``
(caption2smiles: source caption, gold SMILES, output SMILES); it is read with no quoting. Every row
names a gold pair (molecule, caption). Pairs may be restricted to those of gold pair files, are
subsampled with a seed at the pair level (so a sampled pair contributes both directions, as in the
paper's "10% of the pairs"), become triplets, and then go through ``common.filter_rows`` (empty
and equivalent rejections and duplicates dropped and counted) and ``common.score_rows``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from almol_jax.data.files import DataFileError, jsonl_objects, table, tsv_table
from almol_jax.preferences.common import (
    PreferenceRow,
    filter_rows,
    format_summary,
    score_rows,
    subsample,
    summarise,
    write_rows,
    write_summary,
)

HEADERS = {
    ("SMILES", "ground truth", "output"): "smiles2caption",
    ("description", "ground truth", "output"): "caption2smiles",
}


@dataclasses.dataclass(frozen=True)
class PredictionRow:
    """One row of a prediction file: the gold pair and the system's output."""

    molecule: str
    caption: str
    output: str
    line: int

    @property
    def pair(self) -> tuple[str, str]:
        """Join key of the gold pair: (stripped SMILES, stripped caption)."""
        return self.molecule.strip(), self.caption.strip()


def read_prediction_file(path: str | Path) -> tuple[str, list[PredictionRow]]:
    """``(direction, rows)`` of a scorer-format TSV (the one TSV reader: a ragged row, e.g. one
    without its output field, is an error naming file:line)."""
    table = tsv_table(path)
    header = tuple(table.header)
    if header not in HEADERS:
        raise DataFileError(
            f"{table.path}:{table.header_line}: prediction file header {header!r}, expected one "
            f"of {list(HEADERS)}"
        )
    direction = HEADERS[header]
    rows = []
    for line_no, (source, gold, output) in table.rows:
        molecule, caption = (source, gold) if direction == "smiles2caption" else (gold, source)
        rows.append(PredictionRow(molecule=molecule, caption=caption, output=output, line=line_no))
    return direction, rows


def read_gold_pairs(path: str | Path) -> set[tuple[str, str]]:
    """Gold (SMILES, caption) pairs of a ChEBI-20-style TSV/CSV or a JSONL file.

    Columns ``SMILES``/``description`` (or ``molecule``/``caption``). ChEBI-20's escaped ``\\\\`` in
    SMILES is read as ``\\`` (the prediction files use the unescaped form).
    """
    path = Path(path)
    records = jsonl_objects(path) if path.suffix == ".jsonl" else table(path).records()
    pairs = set()
    for line_no, rec in records:
        molecule = rec.get("SMILES", rec.get("molecule"))
        caption = rec.get("description", rec.get("caption"))
        if not isinstance(molecule, str) or not isinstance(caption, str):
            raise DataFileError(
                f"{path}:{line_no}: needs text SMILES/description or molecule/caption fields, "
                f"has {sorted(rec)}"
            )
        pairs.add((molecule.replace("\\\\", "\\").strip(), caption.strip()))
    return pairs


def build_from_predictions(
    prediction_files: Sequence[str | Path],
    *,
    system: str,
    fraction: float = 1.0,
    seed: int = 0,
    gold_files: Sequence[str | Path] = (),
    score: bool = True,
) -> tuple[list[PreferenceRow], dict]:
    """Triplets (chosen = gold, rejected = output) from prediction files, and the summary dict."""
    if not prediction_files:
        raise ValueError("no prediction files given")
    if not system:
        raise ValueError(f"{system=} must name the system that produced the predictions")
    files = [(Path(p), *read_prediction_file(p)) for p in prediction_files]
    gold = set().union(*(read_gold_pairs(g) for g in gold_files)) if gold_files else None
    all_pairs = {r.pair for _p, _d, rows in files for r in rows}
    eligible = all_pairs if gold is None else all_pairs & gold
    sampled = subsample(eligible, fraction, seed)
    triplets = []
    for _path, direction, rows in files:
        for r in rows:
            if r.pair not in sampled:
                continue
            source, chosen = (
                (r.molecule, r.caption)
                if direction == "smiles2caption"
                else (r.caption, r.molecule)
            )
            triplets.append(
                PreferenceRow(source, chosen, r.output, direction, source_system=system)
            )
    kept, counts = filter_rows(triplets)
    if score:
        kept = score_rows(kept)
    from rdkit import __version__ as rdkit_version  # noqa: PLC0415

    summary = summarise(
        counts,
        kept,
        builder="from_predictions",
        system=system,
        fraction=fraction,
        seed=seed,
        files=[{"path": str(p), "direction": d, "rows": len(rows)} for p, d, rows in files],
        gold_files=[str(g) for g in gold_files],
        pairs={
            "distinct": len(all_pairs),
            "not_in_gold": len(all_pairs - eligible),
            "sampled": len(sampled),
        },
        versions={"rdkit": rdkit_version},
    )
    return kept, summary


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``from-predictions`` sub-command."""
    p = subparsers.add_parser(
        "from-predictions",
        help="triplets from another system's prediction files (chosen = gold, rejected = its output)",
        description=(
            "Build preference triplets from scorer-format prediction TSVs (header 'SMILES<TAB>ground "
            "truth<TAB>output' for smiles2caption or 'description<TAB>ground truth<TAB>output' for "
            "caption2smiles; no quoting). chosen = the ground truth, rejected = the output. Gold pairs are "
            "subsampled with --seed at the pair level (both directions of a sampled pair are kept), then rows "
            "with an empty output, or an output equivalent to the gold (same InChI for molecules, same text "
            "up to case and whitespace for captions), and exact duplicates are dropped and counted. Writes "
            "JSONL or CSV rows (source, chosen, rejected, direction, source_system, score, score_name) and a "
            "JSON summary, and prints a summary table."
        ),
    )
    p.add_argument(
        "--predictions",
        required=True,
        help="prediction TSV file(s), comma-separated, either direction",
    )
    p.add_argument(
        "--system",
        required=True,
        help="name of the system that produced the outputs, e.g. molt5-large",
    )
    p.add_argument(
        "--fraction",
        type=float,
        default=1.0,
        help="share of gold pairs kept, in (0, 1] (0.1 = paper)",
    )
    p.add_argument("--seed", type=int, default=0, help="subsampling seed (default 0)")
    p.add_argument(
        "--gold",
        default="",
        help="optional gold pair file(s), comma-separated (ChEBI-20 TSV or JSONL): keep only these pairs",
    )
    p.add_argument("--out", required=True, help="output file, .jsonl or .csv")
    p.add_argument(
        "--report", default=None, help="summary JSON (default: OUT with suffix .summary.json)"
    )
    p.add_argument(
        "--no-score",
        action="store_true",
        help="leave score empty (skips Morgan FTS / sentence BLEU)",
    )
    p.set_defaults(func=run_cli)


def _split_list(value: str) -> list[str]:
    return [v for v in (s.strip() for s in value.split(",")) if v]


def run_cli(args: argparse.Namespace) -> int:
    """Run ``from-predictions`` with parsed arguments."""
    rows, summary = build_from_predictions(
        _split_list(args.predictions),
        system=args.system,
        fraction=args.fraction,
        seed=args.seed,
        gold_files=_split_list(args.gold),
        score=not args.no_score,
    )
    out = write_rows(rows, args.out)
    report = Path(args.report) if args.report else out.with_suffix(".summary.json")
    summary["output"] = str(out)
    write_summary(summary, report)
    print(format_summary(summary))
    print(f"pairs: {summary['pairs']}")
    print(f"wrote {len(rows)} triplets to {out} and the summary to {report}")
    return 0
