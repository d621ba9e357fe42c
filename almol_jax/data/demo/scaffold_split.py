"""Bemis-Murcko scaffold split: no scaffold is shared between train, validation and test.

Molecules are grouped by their Murcko scaffold SMILES (acyclic molecules share the empty scaffold).
Groups larger than half a held-out split go to train (the balanced scaffold split of chemprop /
DeepChem); the rest are shuffled with the seed and fill validation, then test, to their target
sizes; everything left goes to train. Held-out molecules therefore have scaffolds train never saw.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from rdkit import Chem
from rdkit.Chem.Scaffolds import MurckoScaffold

SPLITS = ("train", "validation", "test")


def murcko_scaffold(smiles: str) -> str:
    """Canonical Murcko scaffold SMILES of ``smiles`` (``""`` for acyclic molecules)."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"{smiles=} does not parse")
    return MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False)


def scaffold_split(
    scaffolds: Sequence[str],
    *,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, list[int]]:
    """Indices per split (``train``/``validation``/``test``, each sorted) for molecules with ``scaffolds``."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"{fractions=} must be three non-negative numbers summing to 1")
    groups: dict[str, list[int]] = {}
    for i, scaffold in enumerate(scaffolds):
        groups.setdefault(scaffold, []).append(i)
    n = len(scaffolds)
    targets = {"validation": round(fractions[1] * n), "test": round(fractions[2] * n)}
    big_limit = max(targets.values()) / 2
    ordered = sorted(groups.items())  # deterministic before shuffling
    big = [g for g in ordered if len(g[1]) > big_limit]
    small = [g for g in ordered if len(g[1]) <= big_limit]
    random.Random(seed).shuffle(small)
    out: dict[str, list[int]] = {name: [] for name in SPLITS}
    for _scaffold, members in big:
        out["train"].extend(members)
    for _scaffold, members in small:
        for name in ("validation", "test"):
            if len(out[name]) + len(members) <= targets[name]:
                out[name].extend(members)
                break
        else:
            out["train"].extend(members)
    return {name: sorted(idx) for name, idx in out.items()}
