"""Nearest neighbours by Morgan Tanimoto similarity: the demo's "adequate but not perfect" rejections.

For each molecule the rejected output is its most similar *other* molecule of the same split
(Morgan radius 2, 2,048 bits; ties broken by the lower index), skipping candidates whose SMILES or
rejection caption (by default the candidate's own caption) equal the molecule's own, so a
rejection never equals its chosen output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from rdkit import Chem, DataStructs
from rdkit.Chem import rdFingerprintGenerator
from tqdm.auto import tqdm


def morgan_bitvects(smiles: Sequence[str], *, radius: int = 2, n_bits: int = 2048) -> list:
    """Morgan bit vectors (RDKit ``ExplicitBitVect``) of ``smiles``."""
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    out = []
    for s in smiles:
        mol = Chem.MolFromSmiles(s)
        if mol is None:
            raise ValueError(f"SMILES {s!r} does not parse")
        out.append(generator.GetFingerprint(mol))
    return out


def nearest_neighbours(
    smiles: Sequence[str],
    captions: Sequence[str],
    *,
    radius: int = 2,
    n_bits: int = 2048,
    progress: bool = False,
    rejected_caption: Callable[[int, int], str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(neighbour_N, similarity_N)``: for each molecule its nearest valid other molecule.

    A candidate j of molecule i is valid when its SMILES differs from i's and so does the caption
    that would reject i's: ``rejected_caption(i, j)`` (default: ``captions[j]``). A molecule with
    no valid candidate (only possible with fewer than two distinct molecules) raises.
    """
    if rejected_caption is None:

        def rejected_caption(_i: int, j: int) -> str:
            return captions[j]

    if len(smiles) != len(captions):
        raise ValueError(f"{len(smiles)=} != {len(captions)=}")
    if len(smiles) < 2:
        raise ValueError(f"need at least two molecules for neighbours, got {len(smiles)}")
    fps = morgan_bitvects(smiles, radius=radius, n_bits=n_bits)
    neighbour_N = np.zeros(len(smiles), dtype=np.int64)
    similarity_N = np.zeros(len(smiles), dtype=np.float64)
    for i in tqdm(range(len(fps)), desc="neighbours", disable=not progress, leave=False):
        sims = np.asarray(DataStructs.BulkTanimotoSimilarity(fps[i], fps))
        sims[i] = -1.0
        j = int(np.argmax(sims))  # first maximum: ties go to the lower index
        if smiles[j] != smiles[i] and rejected_caption(i, j) != captions[i]:
            neighbour_N[i], similarity_N[i] = j, sims[j]
            continue
        for j in np.argsort(-sims, kind="stable"):
            if j == i:
                raise ValueError(
                    f"molecule {i} ({smiles[i]!r}) has no neighbour with a different caption"
                )
            if smiles[j] != smiles[i] and rejected_caption(i, int(j)) != captions[i]:
                neighbour_N[i], similarity_N[i] = j, sims[j]
                break
    return neighbour_N, similarity_N
