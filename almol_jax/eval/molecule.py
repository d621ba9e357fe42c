"""Molecule-side metrics (caption2smiles), matching MolT5's and L+M-24's scorers.

RDKit work is done once per unique SMILES string of a chunk of rows (:func:`smiles_features`,
cached, in worker processes), then each row pairs the features of its reference and output:
- exact match: InChI(output) == InChI(reference), both parsed and both InChI non-empty
  (RDKit returns '' when InChI generation fails, e.g. for '*'; that counts as no match);
- validity: both strings parse (RDKit parses '' as a valid empty molecule, as in the scorers);
- MACCS / RDK / Morgan FTS: Tanimoto of MACCS keys, ``RDKFingerprint`` defaults (via the
  identical RDKit fingerprint generator), Morgan radius-``r`` unfolded count fingerprints;
- canonical SMILES (for FCD) and raw-string uniqueness (L+M-24).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MolFeatures:
    """Everything the row metrics need from one SMILES string; ``valid`` False -> Nones."""

    valid: bool
    inchi: str = ""
    canonical: str | None = None
    maccs: object = None
    rdk: object = None
    morgan: object = None


INVALID = MolFeatures(valid=False)


def smiles_features(smiles: str, morgan_radius: int = 2, canonical: bool = True) -> MolFeatures:
    """Parse ``smiles``; compute its InChI, the three fingerprints and (when ``canonical``, for
    FCD) its canonical SMILES."""
    from rdkit import Chem
    from rdkit.Chem import MACCSkeys, rdFingerprintGenerator
    from rdkit.rdBase import BlockLogs

    with BlockLogs():
        try:
            mol = Chem.MolFromSmiles(smiles)
        except Exception:  # noqa: BLE001 - RDKit raises on e.g. embedded NULs
            mol = None
        if mol is None:
            return INVALID
        try:
            inchi = Chem.MolToInchi(mol) or ""
        except Exception:  # noqa: BLE001
            inchi = ""
        canonical_smiles = None
        if canonical:
            try:
                canonical_smiles = Chem.MolToSmiles(mol)
            except Exception:  # noqa: BLE001
                pass
        rdk_gen = rdFingerprintGenerator.GetRDKitFPGenerator()
        morgan_gen = rdFingerprintGenerator.GetMorganGenerator(radius=morgan_radius)
        return MolFeatures(
            valid=True,
            inchi=inchi,
            canonical=canonical_smiles,
            maccs=MACCSkeys.GenMACCSKeys(mol),
            rdk=rdk_gen.GetFingerprint(mol),
            morgan=morgan_gen.GetSparseCountFingerprint(mol),
        )


def row_metrics(reference: str, output: str, ref: MolFeatures, out: MolFeatures) -> dict:
    """Per-row molecule metrics; FTS are None where either side is invalid."""
    from rdkit import DataStructs

    valid = ref.valid and out.valid
    row = {
        "valid": valid,
        "output_valid": out.valid,
        "exact_match": bool(valid and ref.inchi and ref.inchi == out.inchi),
        "maccs_fts": None,
        "rdk_fts": None,
        "morgan_fts": None,
    }
    if valid:
        row["maccs_fts"] = DataStructs.TanimotoSimilarity(ref.maccs, out.maccs)
        row["rdk_fts"] = DataStructs.TanimotoSimilarity(ref.rdk, out.rdk)
        row["morgan_fts"] = DataStructs.TanimotoSimilarity(ref.morgan, out.morgan)
    return row


FTS_KEYS = ("maccs_fts", "rdk_fts", "morgan_fts")


def aggregate_fts(per_row: Sequence[dict], averaging: str) -> dict:
    """Mean FTS: ``molt5`` over rows with both molecules valid (NaN when there are none);
    ``lpm24`` over all rows with an invalid output counting 0."""
    out = {}
    for key in FTS_KEYS:
        values = [r[key] for r in per_row]
        if averaging == "molt5":
            kept = [v for v in values if v is not None]
            out[key] = float(np.mean(kept)) if kept else float("nan")
        elif averaging == "lpm24":
            out[key] = (
                float(np.mean([0.0 if v is None else v for v in values]))
                if values
                else float("nan")
            )
        else:
            raise ValueError(f"fingerprint averaging={averaging!r} is not 'molt5' or 'lpm24'")
    return out


def uniqueness(outputs: Sequence[str], valid_output: Sequence[bool]) -> float:
    """L+M-24 uniqueness: distinct raw valid outputs / valid outputs (NaN when none)."""
    kept = [o for o, v in zip(outputs, valid_output, strict=True) if v]
    return len(set(kept)) / len(kept) if kept else float("nan")


# The SMILES tokenisation regex of Schwaller et al. (Molecular Transformer), for length stats.
_SMILES_TOKEN_PATTERN = r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|\/|:|~|@|\?|>|\*|\$|%[0-9]{2}|[0-9])"


def smiles_token_count(smiles: str) -> int:
    """Number of SMILES tokens (atoms, bonds, ring closures...); unmatched characters count 1."""
    import re

    matched = re.findall(_SMILES_TOKEN_PATTERN, smiles)
    return len(matched) + (len(smiles) - sum(len(t) for t in matched))
