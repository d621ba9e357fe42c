"""What the SMILES grammar needs to know about elements: symbols, valences, organic subset, bonds.

`element_tables()` builds, once and from RDKit's periodic table (the one home of element symbols
and valence lists), the lookup arrays the automaton in smiles_grammar.py indexes with a character
or an element number.
"""

from __future__ import annotations

import functools

import numpy as np

UNCONSTRAINED = 99  # the valence of '*', metals and anything RDKit gives no valence list for
LETTERS = 52  # A-Z then a-z
AROMATIC_BRACKET = ("b", "c", "n", "o", "p", "s", "se", "as", "te", "si")
ORGANIC = {"B": 5, "C": 6, "N": 7, "O": 8, "P": 15, "S": 16, "F": 9, "I": 53, "*": 0}
ORGANIC.update({"b": 5, "c": 6, "n": 7, "o": 8, "p": 15, "s": 16})
BOND_ORDERS = {"-": 1, "=": 2, "#": 3, "$": 4, ":": 1, "/": 1, "\\": 1}
# RDKit's sanitisation accepts perchlorate, bromate and periodate (valence 7) though its valence
# lists give Cl and Br only 1: the grammar must not reject what RDKit accepts.
HALOGEN_MAX_VALENCE = {17: 7, 35: 7, 53: 7}


@functools.cache
def element_tables() -> dict[str, np.ndarray]:
    """Per-character and per-element lookup tables, from RDKit's periodic table (built once).

    max_valence[z] (z = 0..118; 0 is '*'), organic_z[ch], bond_order[ch], single_z[letter],
    pair_z[letter, lowercase] (the element of a one- or two-letter bracket symbol, -1 if none).
    """
    from rdkit import Chem

    table = Chem.GetPeriodicTable()
    max_valence = np.full(119, UNCONSTRAINED, np.int32)
    symbols = {}
    for z in range(1, 119):
        valences = list(table.GetValenceList(z))
        if valences and -1 not in valences:
            max_valence[z] = max(valences)
        symbols[table.GetElementSymbol(z)] = z
    for z, valence in HALOGEN_MAX_VALENCE.items():
        max_valence[z] = valence
    for sym in AROMATIC_BRACKET:
        symbols[sym] = symbols[sym.capitalize()]
    organic_z = np.full(128, -1, np.int32)
    for ch, z in ORGANIC.items():
        organic_z[ord(ch)] = z
    bond_order = np.zeros(128, np.int32)
    for ch, order in BOND_ORDERS.items():
        bond_order[ord(ch)] = order
    single_z = np.full(LETTERS, -1, np.int32)
    pair_z = np.full((LETTERS, 26), -1, np.int32)
    for sym, z in symbols.items():
        first = letter_index(sym[0])
        if len(sym) == 1:
            single_z[first] = z
        elif len(sym) == 2 and sym[1].islower():
            pair_z[first, ord(sym[1]) - ord("a")] = z
    return dict(
        max_valence=max_valence,
        organic_z=organic_z,
        bond_order=bond_order,
        single_z=single_z,
        pair_z=pair_z,
        first_ok=(single_z >= 0) | (pair_z >= 0).any(axis=1),
    )


def letter_index(ch: str) -> int:
    """0-25 for A-Z, 26-51 for a-z."""
    return ord(ch) - ord("A") if ch.isupper() else 26 + ord(ch) - ord("a")
