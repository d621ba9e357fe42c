"""The embedded default dataset (``data.builtin: "rdkit_nci"``): RDKit's NCI molecules with
captions written from RDKit facts, Bemis-Murcko scaffold splits, nearest-neighbour preference
triplets in both directions and a small SentencePiece tokenizer, built once and cached.

Importing this package is cheap; RDKit and sentencepiece load when a build runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from almol_jax.data.demo.build import DemoParams, DemoPaths, build_demo_dataset

__all__ = ["DemoParams", "DemoPaths", "build_demo_dataset"]


def __getattr__(name: str):
    """Lazy re-exports of :mod:`almol_jax.data.demo.build`."""
    if name in __all__:
        from almol_jax.data.demo import build  # noqa: PLC0415

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
