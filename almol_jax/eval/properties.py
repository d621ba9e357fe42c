"""L+M-24 property metrics for captions (the shared task's ``text_property_metrics.py``).

A property (a leaf of ``nested_props.json``, e.g. ``Biomedical__antis__anti viral``) is present
in a caption when the SciBERT tokens of its lower-cased name form a contiguous run in the
tokens of the lower-cased caption (no truncation). Per property, TP/FP/FN/TN over rows give
precision, recall, F1 and accuracy (undefined when the denominator is 0). These are averaged up
the hierarchy as the scorer does: a group's value is the mean of its children's defined values
(0.0 when none is defined), and "overall" is the mean over the top categories.
Held-out combinations (``train_withheld_combos.txt``, pairs of property names): a row is a
positive when both properties are present; the counts follow the scorer exactly, including its
TN condition ``(not gt1 or not gt2) and (not out1 or out2)``.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def flatten(tree, prefix: str = "") -> list[str]:
    """Leaf names of a nested_props tree, joined with ``__`` ("Biomedical__antis__anti viral")."""
    names: list[str] = []
    for key, children in tree.items():
        for child in children:
            if isinstance(child, dict):
                names += flatten(child, f"{prefix}{key}__")
            elif isinstance(child, str):
                names.append(f"{prefix}{key}__{child}")
            else:
                raise ValueError(f"nested_props entry under {key!r} is {child!r}, not str or dict")
    return names


def load_nested_props(path: str | Path) -> list[str]:
    """Flattened property names of a nested_props.json file."""
    with open(path, encoding="utf-8") as f:
        return flatten(json.load(f))


def load_combos(path: str | Path) -> list[tuple[str, str]]:
    """Property pairs of a withheld-combos file (``('a', 'b')<TAB>count`` lines)."""
    combos = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                pair = ast.literal_eval(line.strip().split("\t")[0])
            except (ValueError, SyntaxError) as e:
                raise ValueError(
                    f"{path}:{line_no}: not a (prop, prop) tuple: {line.strip()!r:.80}"
                ) from e
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise ValueError(f"{path}:{line_no}: {pair!r:.80} is not a pair")
            combos.append((str(pair[0]), str(pair[1])))
    return combos


def _joined(tokens: Sequence[str]) -> str:
    # WordPiece tokens hold no spaces, so " a b " in " x a b y " <=> contiguous run.
    return " " + " ".join(tokens) + " "


def _present(needle: str, haystack: str) -> bool:
    return needle == "  " or needle in haystack  # an empty token list is in any list


def _ratio(n: int, d: int):
    return n / d if d else None


def _mean_up(tree):
    """The scorer's hierarchical average: leaves None-skipping, empty groups 0.0."""
    if not isinstance(tree, dict):
        return tree
    values = [_mean_up(v) for v in tree.values()]
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else 0.0


def _unflatten(values: dict) -> dict:
    tree: dict = {}
    for name, value in values.items():
        node = tree
        parts = name.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def property_metrics(
    tokenize,
    references: Sequence[str],
    outputs: Sequence[str],
    props: Sequence[str],
    combos: Sequence[tuple[str, str]] | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """(metrics, per-row counts) for L+M-24 property recognition.

    ``tokenize(text) -> list[str]``: the SciBERT WordPiece tokenizer (no truncation).
    """
    ref_text = [_joined(tokenize(r.lower())) for r in references]
    out_text = [_joined(tokenize(o.lower())) for o in outputs]
    prop_text = [_joined(tokenize(p.split("__")[-1].lower())) for p in props]
    tp = dict.fromkeys(props, 0)
    fp, fn, tn = dict(tp), dict(tp), dict(tp)
    per_row = []
    for r, o in zip(ref_text, out_text, strict=True):
        row = {"props_ref": 0, "props_out": 0, "props_tp": 0}
        for name, p in zip(props, prop_text, strict=True):
            g, h = _present(p, r), _present(p, o)
            row["props_ref"] += g
            row["props_out"] += h
            row["props_tp"] += g and h
            if g and h:
                tp[name] += 1
            elif g:
                fn[name] += 1
            elif h:
                fp[name] += 1
            else:
                tn[name] += 1
        per_row.append(row)
    per_prop = {
        "precision": {p: _ratio(tp[p], tp[p] + fp[p]) for p in props},
        "recall": {p: _ratio(tp[p], tp[p] + fn[p]) for p in props},
        "f1": {p: _ratio(2 * tp[p], 2 * tp[p] + fp[p] + fn[p]) for p in props},
        "accuracy": {p: _ratio(tn[p] + tp[p], tn[p] + tp[p] + fn[p] + fp[p]) for p in props},
    }
    metrics: dict[str, float] = {}
    for kind, values in per_prop.items():
        tree = _unflatten(values)
        metrics[f"props_{kind}"] = _mean_up(tree)
        for top, sub in tree.items():
            key = top.lower().replace(" ", "_")
            metrics[f"props_{kind}__{key}"] = _mean_up(sub)
    if combos:
        pairs = [
            (
                _joined(tokenize(a.split("__")[-1].lower())),
                _joined(tokenize(b.split("__")[-1].lower())),
            )
            for a, b in combos
        ]
        ctp = cfp = cfn = ctn = 0
        for r, o in zip(ref_text, out_text, strict=True):
            for a, b in pairs:
                g1, g2 = _present(a, r), _present(b, r)
                h1, h2 = _present(a, o), _present(b, o)
                ctp += (g1 and g2) and (h1 and h2)
                cfn += (g1 and g2) and (not h1 or not h2)
                cfp += (not g1 or not g2) and (h1 and h2)
                ctn += (not g1 or not g2) and (not h1 or h2)  # sic: the scorer's condition
        nan = float("nan")
        for key, value in (
            ("combo_precision", _ratio(ctp, ctp + cfp)),
            ("combo_recall", _ratio(ctp, ctp + cfn)),
            ("combo_f1", _ratio(2 * ctp, 2 * ctp + cfp + cfn)),
            ("combo_accuracy", _ratio(ctn + ctp, ctn + ctp + cfn + cfp)),
        ):
            metrics[key] = nan if value is None else float(value)
    return metrics, per_row
