"""Frechet ChemNet Distance via fcd_torch (an optional extra: ``pip install fcd_torch``).

Set-level, as the MolT5 / L+M-24 scorers compute it: reference and output SMILES are each
RDKit-canonicalised, empties and parse failures dropped, and the two sets compared with the
ChemNet weights that ship in fcd_torch's wheel. fcd_torch 1.0.7 matches the reference fcd 1.1
implementation (fcd 1.2.x pads instead of truncating and gives different numbers). Any failure,
including fewer than two molecules on a side, gives NaN, never an exception.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence


def fcd_available() -> bool:
    """Whether fcd_torch and torch are installed (found, not imported: torch is slow to load)."""
    from importlib.util import find_spec

    return find_spec("fcd_torch") is not None and find_spec("torch") is not None


def fcd_score(
    reference_canonical: Sequence[str | None],
    output_canonical: Sequence[str | None],
    *,
    device: str = "cpu",
) -> float:
    """FCD between two sets of canonical SMILES (None / '' entries dropped); NaN on failure."""
    from fcd_torch import FCD

    refs = [s for s in reference_canonical if s]
    outs = [s for s in output_canonical if s]
    if len(refs) < 2 or len(outs) < 2:
        return float("nan")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = FCD(device=device, n_jobs=1, canonize=False)(refs, outs)
    except Exception:  # noqa: BLE001 - FCD is best-effort: NaN, never a crash
        return float("nan")
    value = float(value)
    return value if math.isfinite(value) else float("nan")
