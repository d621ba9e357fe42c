"""The one reader of each text file format: UTF-8 lines, JSON lines, TSV (no quoting), CSV.

Training data (data/sources.py), prediction files (eval/io.py) and preference building
(preferences/from_predictions.py) all read their text files here, under one policy:
- UTF-8, a byte-order mark at the start ignored, `\\n` or `\\r\\n` line ends; a line that is not
  valid UTF-8 is an error naming file:line;
- blank lines (and table rows whose every field is blank) are skipped;
- tables have a header line (its cells stripped of surrounding spaces); a row with another number
  of fields than the header (a ragged row: a stray tab, a missing column) is an error naming
  file:line, never padded or dropped;
- JSON lines hold one object each; anything else is an error naming file:line.
Every such error is a `DataFileError`: a `UserError` (one `error:` line from a command) and a
`ValueError` (for library callers that catch those).
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from almol_jax.errors import UserError

TSV_SUFFIXES = (".tsv", ".txt")


class DataFileError(UserError, ValueError):
    """A data, prediction or gold file that cannot be read; the message names file:line."""


def text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without its line end) of every line of a UTF-8 file."""
    path = Path(path)
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataFileError(
                    f"{path}:{lineno}: not valid UTF-8 ({err.reason} at byte {err.start})"
                ) from None
            yield lineno, text.removesuffix("\n").removesuffix("\r")


def jsonl_objects(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line of a JSON-lines file."""
    for lineno, text in text_lines(path):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataFileError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
        except RecursionError:
            raise DataFileError(f"{path}:{lineno}: JSON nested too deeply") from None
        if not isinstance(row, dict):
            raise DataFileError(
                f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}"
            )
        yield lineno, row


@dataclass
class Table:
    """A header and the rows (line number, fields) of a TSV or CSV file, each row checked to
    have the header's number of fields."""

    path: Path
    header_line: int
    header: list[str]
    rows: Iterator[tuple[int, list[str]]]

    def records(self) -> Iterator[tuple[int, dict[str, str]]]:
        """(line number, {column: field}) of every row."""
        for lineno, fields in self.rows:
            yield lineno, dict(zip(self.header, fields, strict=True))


def _checked(path: Path, header: list[str], rows) -> Iterator[tuple[int, list[str]]]:
    for lineno, fields in rows:
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise DataFileError(
                f"{path}:{lineno}: {len(fields)} fields, the header has {len(header)} "
                f"({header}); a ragged row (a stray tab or a missing column?)"
            )
        yield lineno, fields


def _table(path: Path, rows: Iterator[tuple[int, list[str]]]) -> Table:
    for lineno, fields in rows:
        if any(f.strip() for f in fields):
            header = [h.strip() for h in fields]
            return Table(path, lineno, header, _checked(path, header, rows))
    raise DataFileError(f"{path}: empty file, expected a header line")


def tsv_table(path: str | os.PathLike) -> Table:
    """A tab-separated file with a header, read with NO quoting (the scorers' convention)."""
    path = Path(path)
    return _table(path, ((n, text.split("\t")) for n, text in text_lines(path)))


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    csv.field_size_limit(sys.maxsize)
    lines = (text + "\n" for _, text in text_lines(path))
    reader = csv.reader(lines, delimiter=",", quoting=csv.QUOTE_MINIMAL, strict=True)
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataFileError(f"{path}:{reader.line_num}: not valid CSV ({err})") from None
        yield reader.line_num, fields


def csv_table(path: str | os.PathLike) -> Table:
    """A comma-separated file with a header and standard quoting."""
    path = Path(path)
    return _table(path, _csv_rows(path))


def table(path: str | os.PathLike) -> Table:
    """The table of a .csv file (CSV) or of any other file (the scorers' TSV)."""
    return csv_table(path) if Path(path).suffix.lower() == ".csv" else tsv_table(path)
