"""Reading prediction files: the community scorer's TSV, or a plain CSV / JSONL.

Every reader returns a :class:`Predictions` (parallel lists of source, reference and output
strings). The files are read by the one reader of each format (``almol_jax.data.files``); the
scorer's TSV exactly like the reference scripts read it: tab-separated, no quoting, header
``SMILES<TAB>ground truth<TAB>output`` (smiles2caption) or ``description<TAB>ground truth<TAB>output``
(caption2smiles). A missing column or a ragged row is an error naming the file and line (a
:class:`PredictionFileError` here, a ``DataFileError`` from the reader; both are user errors).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from almol_jax.data.files import DataFileError, Table, csv_table, jsonl_objects, tsv_table
from almol_jax.directions import DIRECTIONS

TSV_SOURCE_COLUMN = {"caption2smiles": "description", "smiles2caption": "SMILES"}
REFERENCE_COLUMNS = ("ground truth", "reference")
OUTPUT_COLUMNS = ("output",)
SOURCE_COLUMNS = ("source", "description", "SMILES", "smiles", "caption")


class PredictionFileError(DataFileError):
    """A prediction file that cannot be read as (source, reference, output) rows."""


@dataclass(frozen=True)
class Predictions:
    """Parallel lists of the rows of a prediction file (N rows each)."""

    sources: list[str]
    references: list[str]
    outputs: list[str]
    path: str | None = None
    format: str = "lists"

    def __post_init__(self):
        lengths = (len(self.sources), len(self.references), len(self.outputs))
        if len(set(lengths)) != 1:
            raise ValueError(f"sources/references/outputs differ in length: {lengths}")

    def __len__(self) -> int:
        return len(self.outputs)


def check_task(task: str) -> str:
    """``task`` itself, or a ValueError naming it."""
    if task not in DIRECTIONS:
        raise ValueError(f"{task=} is not one of {DIRECTIONS}")
    return task


def check_rows(sources, references, outputs) -> int:
    """The row count N of (sources or None, references, outputs), checked: equal lengths, and
    every reference and output a str (a TypeError / ValueError names the first bad one)."""
    n = len(outputs)
    if len(references) != n or (sources is not None and len(sources) != n):
        lens = (None if sources is None else len(sources), len(references), n)
        raise ValueError(f"sources/references/outputs lengths differ: {lens}")
    for name, seq in (("references", references), ("outputs", outputs)):
        for i, value in enumerate(seq):
            if not isinstance(value, str):
                raise TypeError(f"{name}[{i}]={value!r:.80} is not a str")
    return n


def row_records(sources, references, outputs, values, lengths, properties=None) -> list[dict]:
    """The per-row report records of a scored task, in the report's column order: row, source,
    reference, output, the row's metric `values`, its `properties` (when given), the character
    lengths, then its token `lengths` (per-row dicts)."""
    n = len(references)
    return [
        {
            "row": i,
            "source": src,
            "reference": ref,
            "output": hyp,
            **vals,
            **(properties[i] if properties else {}),
            "ref_chars": len(ref),
            "out_chars": len(hyp),
            **lengths[i],
        }
        for i, (src, ref, hyp, vals) in enumerate(
            zip(sources or [""] * n, references, outputs, values, strict=True)
        )
    ]


def _pick(header: list[str], names: tuple[str, ...], what: str, path, line: int) -> int:
    for name in names:
        if name in header:
            return header.index(name)
    raise PredictionFileError(
        f"{path}:{line}: no {what} column (looked for {list(names)}) in header {header}"
    )


def _rows_from_table(table: Table, task: str | None, fmt: str) -> Predictions:
    """The (source, reference, output) columns of a checked table."""
    path, header, header_line = table.path, table.header, table.header_line
    if task is not None and fmt == "tsv":
        other = [t for t in DIRECTIONS if t != task][0]
        if TSV_SOURCE_COLUMN[other] in header and TSV_SOURCE_COLUMN[task] not in header:
            raise PredictionFileError(
                f"{path}:{header_line}: header {header} is the {other} layout, "
                f"but task={task!r} expects a {TSV_SOURCE_COLUMN[task]!r} column"
            )
    src = _pick(header, SOURCE_COLUMNS, "source", path, header_line)
    ref = _pick(header, REFERENCE_COLUMNS, "reference ('ground truth')", path, header_line)
    out = _pick(header, OUTPUT_COLUMNS, "output", path, header_line)
    sources, references, outputs = [], [], []
    for _, fields in table.rows:
        sources.append(fields[src])
        references.append(fields[ref])
        outputs.append(fields[out])
    return Predictions(sources, references, outputs, path=str(path), format=fmt)


@contextmanager
def _prediction_errors() -> Iterator[None]:
    """The reader's DataFileError as a PredictionFileError (the same message)."""
    try:
        yield
    except DataFileError as err:
        if isinstance(err, PredictionFileError):
            raise
        raise PredictionFileError(str(err)) from None


def read_tsv(path: str | os.PathLike, task: str | None = None) -> Predictions:
    """The scorer's TSV: tab-separated, no quoting, a header line."""
    with _prediction_errors():
        return _rows_from_table(tsv_table(path), task, "tsv")


def read_csv(path: str | os.PathLike, task: str | None = None) -> Predictions:
    """A plain CSV (standard quoting) with source, reference and output columns."""
    with _prediction_errors():
        return _rows_from_table(csv_table(path), task, "csv")


def read_jsonl(path: str | os.PathLike, task: str | None = None) -> Predictions:
    """JSON lines, one object per row with source / reference / output keys."""
    with _prediction_errors():
        return _read_jsonl(path)


def _read_jsonl(path: str | os.PathLike) -> Predictions:
    sources, references, outputs = [], [], []
    for line_no, obj in jsonl_objects(path):
        row = []
        for names in (SOURCE_COLUMNS, REFERENCE_COLUMNS, OUTPUT_COLUMNS):
            key = next((k for k in names if k in obj), None)
            if key is None:
                raise PredictionFileError(
                    f"{path}:{line_no}: no key among {list(names)} in {sorted(obj)}"
                )
            value = obj[key]
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise PredictionFileError(f"{path}:{line_no}: {key}={value!r:.80} is not a string")
            row.append(value)
        sources.append(row[0])
        references.append(row[1])
        outputs.append(row[2])
    return Predictions(sources, references, outputs, path=str(path), format="jsonl")


def read_predictions(path: str | os.PathLike, task: str | None = None) -> Predictions:
    """Read a prediction file, choosing the reader by extension (.jsonl/.json, .csv, else TSV)."""
    if task is not None:
        check_task(task)
    path = Path(path)
    if not path.is_file():
        raise PredictionFileError(f"prediction file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return read_jsonl(path, task)
    if suffix == ".csv":
        return read_csv(path, task)
    return read_tsv(path, task)


def write_tsv(path: str | os.PathLike, task: str, predictions: Predictions) -> None:
    """Write ``predictions`` in the scorer's TSV layout (tabs/newlines in fields are refused)."""
    check_task(task)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(f"{TSV_SOURCE_COLUMN[task]}\tground truth\toutput\n")
        for i, row in enumerate(
            zip(predictions.sources, predictions.references, predictions.outputs, strict=True)
        ):
            for value in row:
                if "\t" in value or "\n" in value or "\r" in value:
                    raise ValueError(
                        f"row {i}: {value!r:.80} holds a tab or newline; use CSV/JSONL"
                    )
            f.write("\t".join(row) + "\n")
