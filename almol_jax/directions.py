"""The two translation directions (tasks): the one home of their names and order.

``smiles2caption`` is molecule captioning, ``caption2smiles`` text-based molecule generation. The
config (its ``directions`` fields and prompt templates), the data readers, the demo dataset
builder, preference building and the evaluator (which calls them tasks) all import them from
here. It is a module of its own at the package root, importing nothing, because its users sit in
packages that must not import one another for it: the evaluator is host-only Python that never
imports JAX, and the config must not import the data pipeline (which imports the config).
"""

from __future__ import annotations

DIRECTIONS = ("smiles2caption", "caption2smiles")


def directions_of(value: str | tuple[str, ...]) -> tuple[str, ...]:
    """Expands a ``directions`` field ("both" or a tuple) into a tuple of direction names."""
    return DIRECTIONS if value == "both" else tuple(value)
