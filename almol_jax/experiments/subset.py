"""The 10% arms' data: a seeded subset of the training pairs, and its preference triplets.

``write_subset`` keeps ``round(fraction * n)`` of the distinct gold pairs, drawn with the seed by
the preference builders' own ``subsample`` (both directions of a kept pair are trained, as in the
paper's "10% of the pairs"), as a pair JSONL in the training file's order. The weak system's greedy
outputs on that file (eval.py) become the rejections through ``python -m almol_jax.preferences
from-predictions`` with the subset as its gold filter: empty outputs and outputs equivalent to the
gold (same InChI, same caption up to case and spacing) are dropped and counted by the builder.
"""

from __future__ import annotations

import json
from pathlib import Path

from almol_jax.data.files import jsonl_objects
from almol_jax.directions import DIRECTIONS
from almol_jax.errors import ConfigError
from almol_jax.preferences.common import subsample


def _pair_key(record: dict) -> tuple[str, str]:
    return str(record["SMILES"]).strip(), str(record["description"]).strip()


def write_subset(train_pairs: str | Path, fraction: float, seed: int, out: Path) -> int:
    """Writes the seed's subset of ``train_pairs`` (JSONL, SMILES/description) to ``out``;
    returns its number of pairs."""
    path = Path(train_pairs)
    if path.suffix != ".jsonl":
        raise ConfigError(f"train_pairs {str(path)!r}: the experiment reads JSONL pair files")
    records = [rec for _line, rec in jsonl_objects(path)]
    for rec in records:
        if not {"SMILES", "description"} <= set(rec):
            raise ConfigError(f"{path}: pair rows need SMILES and description fields")
    chosen = subsample((_pair_key(r) for r in records), fraction, seed)
    kept = [r for r in records if _pair_key(r) in chosen]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    tmp.replace(out)
    return len(kept)


def builder_args(weak_outputs: Path, subset: Path, out: Path, system: str) -> list[str]:
    """The from-predictions command line (without the interpreter)."""
    predictions = ",".join(str(weak_outputs / d / "predictions.tsv") for d in DIRECTIONS)
    return [
        "-m",
        "almol_jax.preferences",
        "from-predictions",
        "--predictions",
        predictions,
        "--system",
        system,
        "--gold",
        str(subset),
        "--fraction",
        "1.0",
        "--out",
        str(out),
    ]
