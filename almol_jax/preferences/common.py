"""Shared pieces of every preference-data builder: equivalence, filtering, sampling, writing.

A builder (``from_predictions``: chosen = gold, rejected = another system's output;
``self_generated``: rejected = the model's own output) produces :class:`PreferenceRow` objects and
hands them to these functions, so every builder drops, counts, scores and writes rows the same way.

API (all pure functions of their arguments; randomness only through an explicit seed):

- ``DIRECTIONS``: ``("smiles2caption", "caption2smiles")`` (from almol_jax/directions.py).
- ``PreferenceRow(source, chosen, rejected, direction, source_system=None, score=None,
  score_name=None)``: one triplet plus provenance; ``.to_dict()`` gives the output row
  (columns ``OUTPUT_COLUMNS``).
- ``canonical_inchi(smiles) -> str | None``: standard InChI, None for empty/unparsable.
- ``normalise_text(text) -> str``: case-folded, whitespace collapsed and stripped.
- ``is_empty(text) -> bool``: None or only whitespace.
- ``equivalent(a, b, direction) -> bool``: molecules (caption2smiles responses) by InChI (raw
  stripped strings when either does not parse); captions (smiles2caption responses) by
  ``normalise_text``.
- ``subsample(keys, fraction, seed) -> set``: a seeded ``round(fraction * n)``-subset of the
  distinct keys (sorted first, so input order does not matter); fraction 1.0 keeps all.
- ``filter_rows(rows) -> (kept, FilterCounts)``: drops, in this order and counting each per
  direction, rows with an empty rejected, rows whose rejected is equivalent to the chosen, and exact
  duplicates of an earlier (source, chosen, rejected, direction).
- ``score_rows(rows) -> rows``: adds ``score``: Morgan count-fingerprint Tanimoto (radius 2,
  unfolded, the scorers' "Morgan FTS") of rejected vs chosen for molecules (None when the rejected
  does not parse), sentence BLEU / 100 (sacrebleu) for captions.
- ``write_rows(rows, path)``: JSONL (``.jsonl``) or CSV (``.csv``) by suffix.
- ``summarise(counts, rows, **meta) -> dict``, ``format_summary(summary) -> str`` (a table),
  ``write_summary(summary, path)`` (JSON).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import re
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path

from almol_jax.directions import DIRECTIONS

OUTPUT_COLUMNS = (
    "source",
    "chosen",
    "rejected",
    "direction",
    "source_system",
    "score",
    "score_name",
)
SCORE_NAMES = {"caption2smiles": "morgan_fts", "smiles2caption": "sentence_bleu"}


@dataclasses.dataclass(frozen=True)
class PreferenceRow:
    """One preference triplet with its provenance."""

    source: str
    chosen: str
    rejected: str
    direction: str
    source_system: str | None = None
    score: float | None = None
    score_name: str | None = None

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction={self.direction!r} is not one of {DIRECTIONS}")

    def to_dict(self) -> dict:
        """The output row, keys in ``OUTPUT_COLUMNS`` order."""
        return {k: getattr(self, k) for k in OUTPUT_COLUMNS}


def is_empty(text: str | None) -> bool:
    """True for None and whitespace-only strings."""
    return text is None or not text.strip()


def normalise_text(text: str) -> str:
    """Case-folded text with runs of whitespace collapsed to one space, stripped."""
    return re.sub(r"\s+", " ", text).strip().casefold()


def canonical_inchi(smiles: str | None) -> str | None:
    """Standard InChI of ``smiles``; None when it is empty, does not parse or has no InChI."""
    if is_empty(smiles):
        return None
    from rdkit import Chem, RDLogger  # noqa: PLC0415 (RDKit loads only when molecules are compared)

    RDLogger.DisableLog("rdApp.*")
    try:
        mol = Chem.MolFromSmiles(smiles.strip())
        return (Chem.MolToInchi(mol) or None) if mol is not None and mol.GetNumAtoms() else None
    finally:
        RDLogger.EnableLog("rdApp.*")


def equivalent(a: str, b: str, direction: str) -> bool:
    """Whether two responses of ``direction`` say the same thing (see the module docstring)."""
    if direction == "caption2smiles":
        inchi_a, inchi_b = canonical_inchi(a), canonical_inchi(b)
        if inchi_a is not None and inchi_b is not None:
            return inchi_a == inchi_b
        return a.strip() == b.strip()
    if direction == "smiles2caption":
        return normalise_text(a) == normalise_text(b)
    raise ValueError(f"direction={direction!r} is not one of {DIRECTIONS}")


def subsample(keys: Iterable[Hashable], fraction: float, seed: int) -> set:
    """A seeded subset of ``round(fraction * n)`` of the ``n`` distinct keys."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"{fraction=} must be in (0, 1]")
    distinct = sorted(set(keys), key=repr)
    if fraction == 1.0:
        return set(distinct)
    return set(random.Random(seed).sample(distinct, round(fraction * len(distinct))))


@dataclasses.dataclass
class FilterCounts:
    """Rows seen and dropped per direction by :func:`filter_rows`."""

    input: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(DIRECTIONS, 0))
    empty_rejected: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(DIRECTIONS, 0)
    )
    equivalent: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(DIRECTIONS, 0)
    )
    duplicates: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(DIRECTIONS, 0)
    )
    kept: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(DIRECTIONS, 0))


def filter_rows(rows: Iterable[PreferenceRow]) -> tuple[list[PreferenceRow], FilterCounts]:
    """Drop empty-rejected, equivalent and duplicate rows (counted per direction); keep the order."""
    counts = FilterCounts()
    kept: list[PreferenceRow] = []
    seen: set[tuple[str, str, str, str]] = set()
    for row in rows:
        d = row.direction
        counts.input[d] += 1
        if is_empty(row.rejected):
            counts.empty_rejected[d] += 1
        elif equivalent(row.chosen, row.rejected, d):
            counts.equivalent[d] += 1
        elif (key := (row.source, row.chosen, row.rejected, d)) in seen:
            counts.duplicates[d] += 1
        else:
            seen.add(key)
            kept.append(row)
            counts.kept[d] += 1
    return kept, counts


def morgan_fts(reference: str, output: str) -> float | None:
    """Tanimoto of unfolded radius-2 Morgan count fingerprints; None when either does not parse."""
    from rdkit import Chem, DataStructs, RDLogger  # noqa: PLC0415
    from rdkit.Chem import rdFingerprintGenerator  # noqa: PLC0415

    RDLogger.DisableLog("rdApp.*")
    try:
        mols = [
            Chem.MolFromSmiles(s.strip()) if not is_empty(s) else None for s in (reference, output)
        ]
    finally:
        RDLogger.EnableLog("rdApp.*")
    if any(m is None for m in mols):
        return None
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2)
    fp_ref, fp_out = (generator.GetSparseCountFingerprint(m) for m in mols)
    return float(DataStructs.TanimotoSimilarity(fp_ref, fp_out))


def sentence_bleu(reference: str, output: str) -> float:
    """sacrebleu sentence BLEU of ``output`` against ``reference``, in [0, 1]."""
    import sacrebleu  # noqa: PLC0415

    return float(sacrebleu.sentence_bleu(output, [reference]).score) / 100.0


def score_rows(rows: Sequence[PreferenceRow]) -> list[PreferenceRow]:
    """Rows with ``score``/``score_name`` filled: how close the rejected is to the chosen."""
    out = []
    for row in rows:
        if row.direction == "caption2smiles":
            score = morgan_fts(row.chosen, row.rejected)
        else:
            score = sentence_bleu(row.chosen, row.rejected)
        score = None if score is None else round(score, 6)
        out.append(dataclasses.replace(row, score=score, score_name=SCORE_NAMES[row.direction]))
    return out


def write_rows(rows: Iterable[PreferenceRow], path: str | Path) -> Path:
    """Write rows as JSONL (``.jsonl``) or CSV (``.csv``, header ``OUTPUT_COLUMNS``)."""
    path = Path(path)
    if path.suffix not in (".jsonl", ".csv"):
        raise ValueError(f"output {str(path)!r} must end in .jsonl or .csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        if path.suffix == ".jsonl":
            for row in rows:
                f.write(json.dumps(row.to_dict(), ensure_ascii=False) + "\n")
        else:
            writer = csv.DictWriter(f, fieldnames=OUTPUT_COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if v is None else v) for k, v in row.to_dict().items()})
    return path


def summarise(counts: FilterCounts, rows: Sequence[PreferenceRow], **meta) -> dict:
    """Summary dict: ``meta`` fields, then per-direction and total counts and mean scores."""
    per_direction = {}
    for d in DIRECTIONS:
        scores = [r.score for r in rows if r.direction == d and r.score is not None]
        per_direction[d] = {
            "input": counts.input[d],
            "empty_rejected": counts.empty_rejected[d],
            "equivalent": counts.equivalent[d],
            "duplicates": counts.duplicates[d],
            "kept": counts.kept[d],
            "score_name": SCORE_NAMES[d],
            "scored": len(scores),
            "mean_score": round(sum(scores) / len(scores), 6) if scores else None,
        }
    total = {
        k: sum(per_direction[d][k] for d in DIRECTIONS)
        for k in ("input", "empty_rejected", "equivalent", "duplicates", "kept")
    }
    return {**meta, "per_direction": per_direction, "total": total}


def format_summary(summary: dict) -> str:
    """A plain-text table of ``summarise``'s counts."""
    cols = ("input", "empty_rejected", "equivalent", "duplicates", "kept", "mean_score")
    lines = [f"{'direction':<16}" + "".join(f"{c:>16}" for c in cols)]
    for d, stats in summary["per_direction"].items():
        cells = [stats[c] if stats[c] is not None else "-" for c in cols]
        lines.append(
            f"{d:<16}"
            + "".join(f"{v:>16.4f}" if isinstance(v, float) else f"{v!s:>16}" for v in cells)
        )
    lines.append(f"{'total':<16}" + "".join(f"{summary['total'].get(c, '-')!s:>16}" for c in cols))
    return "\n".join(lines)


def write_summary(summary: dict, path: str | Path) -> Path:
    """Write the summary as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
