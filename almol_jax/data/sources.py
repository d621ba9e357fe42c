"""Reading training/evaluation rows: preference triplets, (molecule, caption) pairs, scorer TSVs.

Every row becomes an :class:`Example` (source, chosen, rejected or None, direction, origin):
- preference rows: columns source / chosen / rejected / direction (names from data.columns);
- pair rows (molecule, caption): expanded to both directions, rejected None (SFT, evaluation);
  ChEBI-20's escaped double backslash in SMILES is read as one backslash;
- the scorer's TSV (header ``SMILES|description<TAB>ground truth<TAB>output``, no quoting): a
  triplet with gold = chosen, output = rejected, direction from the first header cell.

Local ``.jsonl``, ``.tsv``, ``.txt`` and ``.csv`` files are read by the one reader of each format
(``data/files.py``): errors name the file and line (non-UTF-8 bytes, bad JSON, a ragged row,
missing fields); ``.json``, ``.parquet`` and hub datasets (``hf:NAME[:SPLIT]``, needs network) are
read with ``datasets``. Empty responses are dropped and counted (``DataReport``); a missing column
is an error naming the file and the columns it does have.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from almol_jax.data.files import TSV_SUFFIXES, DataFileError, jsonl_objects, table
from almol_jax.data.report import DataReport
from almol_jax.directions import DIRECTIONS, directions_of

SCORER_HEADERS = {"SMILES": "smiles2caption", "description": "caption2smiles"}
MOLECULE_ALIASES = ("SMILES", "smiles", "molecule")
CAPTION_ALIASES = ("description", "caption", "text")


@dataclasses.dataclass(frozen=True)
class Example:
    """One training/evaluation example before tokenisation."""

    source: str  # the prompt's input: a SMILES (smiles2caption) or a caption (caption2smiles)
    chosen: str  # preferred (gold) response
    rejected: str | None  # dis-preferred response; None for pair rows
    direction: str  # smiles2caption | caption2smiles
    origin: str  # "file:line" (or "file:row N") for error messages and reports


# --------------------------------------------------------------------------- raw rows


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for lineno, row in jsonl_objects(path):
        yield f"{path}:{lineno}", row


def _table_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of a TSV (no quoting, the scorers' convention) or CSV file with a header."""
    for lineno, row in table(path).records():
        yield f"{path}:{lineno}", row


def _datasets_rows(spec: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of a json/parquet file or a hub dataset (hf:NAME[:SPLIT]) via ``datasets``."""
    import datasets

    if spec.startswith("hf:"):
        name, _, split = spec[3:].partition(":")
        ds = datasets.load_dataset(name, split=split or "train")
    else:
        suffix = Path(spec).suffix.lower()
        builder = {".json": "json", ".parquet": "parquet"}[suffix]
        ds = datasets.load_dataset(builder, data_files=spec, split="train")
    for i, row in enumerate(ds):
        yield f"{spec}:row {i + 1}", row


def read_rows(spec: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(origin, row dict) for every row of a file or hub dataset spec."""
    if spec.startswith("hf:"):
        yield from _datasets_rows(spec)
        return
    path = Path(spec)
    if not path.is_file():
        raise DataFileError(f"data file {spec!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl_rows(path)
    elif suffix in (*TSV_SUFFIXES, ".csv"):
        yield from _table_rows(path)
    elif suffix in (".json", ".parquet"):
        yield from _datasets_rows(spec)
    else:
        raise DataFileError(
            f"data file {spec!r}: unknown extension {suffix!r} (jsonl/tsv/txt/csv/json/parquet)"
        )


def columns_of(spec: str) -> list[str]:
    """The column names of a data file: its header (tsv/txt/csv) or its first row's keys."""
    path = Path(spec)
    if not spec.startswith("hf:") and path.suffix.lower() in (*TSV_SUFFIXES, ".csv"):
        if not path.is_file():
            raise DataFileError(f"data file {spec!r} does not exist")
        return table(path).header
    for _, row in read_rows(spec):
        return list(row)
    return []


# --------------------------------------------------------------------------- formats


def detect_format(columns: list[str], col: Any) -> str:
    """auto-detection: scorer_tsv by header, preference if chosen/rejected exist, else pairs."""
    if (
        len(columns) >= 3
        and columns[0] in SCORER_HEADERS
        and columns[1:3] == ["ground truth", "output"]
    ):
        return "scorer_tsv"
    if col.chosen in columns and col.rejected in columns:
        return "preference"
    return "pairs"


def _text(value: Any) -> str | None:
    """A cell as text; None/NaN (missing in csv/parquet) become None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def _pick(columns: list[str], wanted: str, aliases: tuple[str, ...]) -> str | None:
    if wanted in columns:
        return wanted
    return next((a for a in aliases if a in columns), None)


def _require(spec: str, columns: list[str], names: Iterable[str], fmt: str) -> None:
    missing = [n for n in names if n not in columns]
    if missing:
        raise DataFileError(
            f"data file {spec!r} ({fmt} format) lacks column(s) {missing}; it has {columns} "
            "(set data.columns.* to map them)"
        )


def read_examples(
    spec: str, fmt: str, columns_cfg: Any, report: DataReport, split: str
) -> list[Example]:
    """All examples of one file in the given format (or "auto"); drops are counted in ``report``."""
    columns = columns_of(spec)
    if fmt == "auto":
        fmt = detect_format(columns, columns_cfg)
    c = columns_cfg
    out: list[Example] = []
    n_rows = 0
    if fmt == "preference":
        _require(spec, columns, [c.source, c.chosen, c.rejected, c.direction], fmt)
    elif fmt == "scorer_tsv":
        if not columns or columns[0] not in SCORER_HEADERS or len(columns) < 3:
            raise DataFileError(
                f"data file {spec!r}: scorer TSV header must be 'SMILES|description<TAB>ground "
                f"truth<TAB>output', got {columns[:3]}"
            )
        _require(spec, columns, ["ground truth", "output"], fmt)
    elif fmt == "pairs":
        mol = _pick(columns, c.molecule, MOLECULE_ALIASES)
        cap = _pick(columns, c.caption, CAPTION_ALIASES)
        _require(spec, columns, [mol or c.molecule, cap or c.caption], fmt)
    else:
        raise ValueError(f"data.format={fmt!r} is not auto, preference, pairs or scorer_tsv")

    for origin, row in read_rows(spec):
        n_rows += 1
        if fmt == "preference":
            for key in (c.source, c.chosen, c.rejected, c.direction):
                if key not in row:
                    raise DataFileError(
                        f"{origin}: missing field {key!r}; the row has {sorted(row)}"
                    )
            direction = _text(row[c.direction])
            if direction not in DIRECTIONS:
                raise DataFileError(f"{origin}: direction {direction!r} is not one of {DIRECTIONS}")
            rows = [(_text(row[c.source]), _text(row[c.chosen]), _text(row[c.rejected]), direction)]
        elif fmt == "scorer_tsv":
            direction = SCORER_HEADERS[columns[0]]
            rows = [
                (
                    _text(row[columns[0]]),
                    _text(row["ground truth"]),
                    _text(row["output"]),
                    direction,
                )
            ]
        else:
            molecule, caption = _text(row.get(mol)), _text(row.get(cap))
            if molecule is not None:  # ChEBI-20 escapes "\" as "\\" (never valid SMILES)
                molecule = molecule.replace("\\\\", "\\")
            rows = [
                (molecule, caption, None, "smiles2caption"),
                (caption, molecule, None, "caption2smiles"),
            ]
        for source, chosen, rejected, direction in rows:
            reason = None
            if source is None or not source.strip():
                reason = "empty_source"
            elif chosen is None or not chosen.strip():
                reason = "empty_chosen"
            elif fmt != "pairs" and (rejected is None or not rejected.strip()):
                reason = "empty_rejected"
            if reason is not None:
                report.drop(split, reason, origin)
                continue
            out.append(Example(source, chosen, rejected, direction, origin))
    report.file_read(split, spec, fmt, n_rows, len(out))
    return out


def split_files(data_cfg: Any, split: str) -> tuple[str, ...]:
    """The files of a split ("train", "validation", "test"); the built-in dataset when configured."""
    if split not in ("train", "validation", "test"):
        raise ValueError(f"split={split!r} is not train, validation or test")
    if data_cfg.builtin is not None:
        from almol_jax.data.demo.build import build_demo_dataset

        paths = build_demo_dataset()
        source = paths.preferences if split != "test" else paths.pairs
        return (str(source[split]),)
    return tuple(getattr(data_cfg, f"{split}_files"))


def load_examples(data_cfg: Any, split: str, report: DataReport) -> list[Example]:
    """Examples of a split from all its files, filtered to data.directions, cut to max_examples."""
    keep = set(directions_of(data_cfg.directions))
    out: list[Example] = []
    for spec in split_files(data_cfg, split):
        for ex in read_examples(spec, data_cfg.format, data_cfg.columns, report, split):
            if ex.direction in keep:
                out.append(ex)
    if data_cfg.max_examples is not None:
        out = out[: data_cfg.max_examples]
    return out
