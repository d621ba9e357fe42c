"""The final RDKit check of beam search under the SMILES grammar (`generation.smiles_rdkit_check`).

The grammar mask makes every output parse, but a token grammar cannot rule out everything RDKit's
sanitisation refuses (aromatic rings that cannot be kekulised, some valences). Beam search ends
with a pool of finished hypotheses per row (beam.beam_pool); this keeps, per row, the best-ranked
one whose SMILES sanitises, else the best one. Plain host Python, run after the compiled decode
loop, so it costs one RDKit parse per finished beam and no device work.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from almol_jax.generation.beam import BeamPool


def sanitizes(smiles: str) -> bool:
    """True when `smiles` is a molecule RDKit sanitises (`Chem.MolFromSmiles` gives a molecule
    with at least one atom; the empty string is no molecule here)."""
    if not smiles.strip():
        return False
    from rdkit import Chem, RDLogger  # noqa: PLC0415 (RDKit loads only when the check runs)

    RDLogger.DisableLog("rdApp.*")  # a failed sanitisation logs an error line per beam
    try:
        mol = Chem.MolFromSmiles(smiles)
    except Exception:  # noqa: BLE001 - RDKit raises on e.g. embedded NULs
        mol = None
    finally:
        RDLogger.EnableLog("rdApp.*")
    return mol is not None and mol.GetNumAtoms() > 0


def choose_slots(pool: BeamPool, accept: Callable[[int, int], bool], rows: int) -> np.ndarray:
    """Per row (the first `rows`), the pool slot of the best-ranked finished hypothesis that
    `accept(row, slot)` takes, else slot 0 (the best); int `[B]`, rows past `rows` keep 0."""
    slots = np.zeros(pool.tokens.shape[0], np.int64)
    for b in range(rows):
        for w in np.flatnonzero(pool.finished[b]):
            if accept(b, int(w)):
                slots[b] = w
                break
    return slots


def chosen(pool: BeamPool, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tokens `[B, N]`, lengths `[B]`) of the chosen slot of each row."""
    rows = np.arange(pool.tokens.shape[0])
    return pool.tokens[rows, slots], pool.lengths[rows, slots]
