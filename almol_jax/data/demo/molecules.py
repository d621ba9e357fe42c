"""The demo's molecules: RDKit's bundled NCI set, parsed, salt-stripped and deduplicated by InChI.

The NCI file (``rdkit/Data/NCI/first_5K.smi``, 4,999 rows of ``SMILES<space>id``) ships inside the
rdkit wheel, so the demo dataset needs no download. Each entry is parsed; unparsable entries and
entries without an InChI are dropped and counted; multi-component entries (salts, solvates) keep
their largest organic fragment (counted); duplicates by standard InChI keep the first occurrence
(counted). Molecules are stored as RDKit canonical SMILES (no isotopes are removed, stereo kept).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from rdkit import Chem, RDConfig, RDLogger
from rdkit.Chem.MolStandardize import rdMolStandardize


def nci_path() -> Path:
    """Path of the NCI SMILES file inside the installed rdkit wheel."""
    return Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"


@dataclasses.dataclass(frozen=True)
class Molecule:
    """One cleaned molecule: source id, canonical SMILES, standard InChI and InChIKey."""

    mol_id: str
    smiles: str
    inchi: str
    inchikey: str


@dataclasses.dataclass
class MoleculeCounts:
    """What happened to the input rows (the dataset report shows these)."""

    input_rows: int = 0
    invalid: int = 0
    largest_fragment_kept: int = 0
    duplicates: int = 0
    kept: int = 0


def read_smiles_file(path: Path, *, limit: int | None = None) -> list[tuple[str, str]]:
    """Rows ``(smiles, id)`` of a whitespace-separated SMILES file (id defaults to the row number)."""
    rows: list[tuple[str, str]] = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            rows.append((parts[0], parts[1] if len(parts) > 1 else str(line_no)))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def load_molecules(
    path: str | os.PathLike | None = None, *, limit: int | None = None
) -> tuple[list[Molecule], MoleculeCounts]:
    """Parse, clean and deduplicate the first ``limit`` rows of ``path`` (default: the NCI set)."""
    if limit is not None and limit <= 0:
        raise ValueError(f"{limit=} must be a positive number of rows or None")
    source = Path(path) if path is not None else nci_path()
    if not source.is_file():
        raise FileNotFoundError(f"molecule source {str(source)!r} does not exist")
    rows = read_smiles_file(source, limit=limit)
    counts = MoleculeCounts(input_rows=len(rows))
    chooser = rdMolStandardize.LargestFragmentChooser(preferOrganic=True)
    seen: set[str] = set()
    molecules: list[Molecule] = []
    RDLogger.DisableLog("rdApp.*")
    try:
        for smiles, mol_id in rows:
            mol = Chem.MolFromSmiles(smiles)
            if mol is None or mol.GetNumAtoms() == 0:
                counts.invalid += 1
                continue
            if len(Chem.GetMolFrags(mol)) > 1:
                mol = chooser.choose(mol)
                counts.largest_fragment_kept += 1
            inchi = Chem.MolToInchi(mol)
            if not inchi:
                counts.invalid += 1
                continue
            if inchi in seen:
                counts.duplicates += 1
                continue
            seen.add(inchi)
            molecules.append(
                Molecule(
                    mol_id=mol_id,
                    smiles=Chem.MolToSmiles(mol),
                    inchi=inchi,
                    inchikey=Chem.InchiToInchiKey(inchi),
                )
            )
    finally:
        RDLogger.EnableLog("rdApp.*")
    counts.kept = len(molecules)
    return molecules, counts
