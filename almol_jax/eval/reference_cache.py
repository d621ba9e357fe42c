"""The reference side of a test set, computed once per content and reused across evaluations.

Evaluating many checkpoints against one test file recomputes the same reference-side work each
time: the RDKit parse, InChI, the three fingerprints and canonical SMILES of every reference
molecule (caption2smiles), and the SciBERT tokens of every reference caption (smiles2caption).
``cached(kind, references, settings, compute, encode, decode)`` keeps that work on disk as JSON
under ``<evaluator cache>/references/<key>.json`` (never a pickle: nothing loaded can run code),
the key a SHA-256 of the kind, everything the values depend on (``settings``: RDKit version and
Morgan radius, or the vocab's SHA-256 and the truncation length) and the reference strings
themselves, so a changed file, option or package version computes afresh. ``encode``/``decode``
turn a value into JSON data and back exactly (fingerprints through RDKit's own binary form), so
the numbers are unchanged; tests/test_eval_reference_cache.py checks it. Writes go through a
temporary file and a rename (a concurrent evaluation never reads half an entry); a damaged entry
is recomputed; the oldest entries beyond ``MAX_ENTRIES`` are removed.
``EvalOptions.reference_cache`` switches it off.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from almol_jax.eval.resources import cache_dir

CACHE_VERSION = 1
MAX_ENTRIES = 64
SUBDIR = "references"


def reference_key(kind: str, references: Sequence[str], settings: Mapping[str, Any]) -> str:
    """The content key of ``references`` scored as ``kind`` under ``settings``."""
    h = hashlib.sha256()
    head = {"kind": kind, "version": CACHE_VERSION, "settings": dict(settings)}
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    for ref in references:
        h.update(b"\0" + ref.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _prune(directory: Path, keep: int) -> None:
    entries = sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        old.unlink(missing_ok=True)


def cached(
    kind: str,
    references: Sequence[str],
    settings: Mapping[str, Any],
    compute: Callable[[list[str]], dict[str, Any]],
    encode: Callable[[Any], Any] = lambda v: v,
    decode: Callable[[Any], Any] = lambda v: v,
    *,
    directory: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """{reference string: value} for the distinct ``references``: read from the cache when this
    content was seen, else ``compute(distinct references)`` (then stored)."""
    root = Path(directory) if directory is not None else cache_dir() / SUBDIR
    key = reference_key(kind, references, settings)
    path = root / f"{key}.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("key") == key:
                values = {ref: decode(v) for ref, v in data["values"]}
                os.utime(path)  # recently used: pruned last
                return values
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged entry is recomputed and replaced
    distinct = list(dict.fromkeys(references))
    values = compute(distinct)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        payload = {"key": key, "kind": kind, "values": [[r, encode(values[r])] for r in distinct]}
        tmp.write_text(json.dumps(payload), encoding="utf-8")
        tmp.replace(path)
        _prune(root, MAX_ENTRIES)
    except OSError:  # a read-only or full cache only costs the recomputation next time
        pass
    return values
