"""Facts about a molecule that RDKit computes, the raw material of the demo captions.

Every caption sentence states one of these facts, so a caption is true of its molecule by
construction (``tests/test_demo_dataset.py`` recomputes a sample independently). Groups come from
RDKit's fragment descriptors (``rdkit.Chem.Fragments``, SMARTS from ``FragmentDescriptors.csv``), the
functional group hierarchy (``rdkit.Chem.FunctionalGroups``, amines) and three SMARTS of ours where
RDKit's definition overlaps another group (ether and methoxy without esters; halogens by element).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

from rdkit import Chem
from rdkit.Chem import Descriptors, Fragments, FunctionalGroups, rdMolDescriptors


@dataclasses.dataclass(frozen=True)
class GroupDef:
    """A countable group: caption nouns, an optional class phrase, and where its pattern comes from.

    ``source`` is ``"fr:<name>"`` (``rdkit.Chem.Fragments`` descriptor ``fr_<name>``), ``"fg:<label>"``
    (node of ``rdkit.Chem.FunctionalGroups``' hierarchy) or ``"smarts:<SMARTS>"``.
    """

    key: str
    singular: str
    plural: str
    class_phrase: str | None
    source: str


# In caption priority order: the first present group with a class phrase names the class.
GROUPS: tuple[GroupDef, ...] = (
    GroupDef(
        "carboxylic_acid",
        "carboxylic acid group",
        "carboxylic acid groups",
        "a carboxylic acid",
        "fr:COO",
    ),
    GroupDef("lactone", "lactone ring", "lactone rings", "a lactone", "fr:lactone"),
    GroupDef("ester", "ester group", "ester groups", "a carboxylic ester", "fr:ester"),
    GroupDef("lactam", "lactam ring", "lactam rings", "a lactam", "fr:lactam"),
    GroupDef("urea", "urea group", "urea groups", "a member of ureas", "fr:urea"),
    GroupDef("imide", "imide group", "imide groups", "an imide", "fr:imide"),
    GroupDef("amide", "amide group", "amide groups", "an amide", "fr:amide"),
    GroupDef(
        "sulfonamide", "sulfonamide group", "sulfonamide groups", "a sulfonamide", "fr:sulfonamd"
    ),
    GroupDef("sulfone", "sulfone group", "sulfone groups", "a sulfone", "fr:sulfone"),
    GroupDef("nitro", "nitro group", "nitro groups", "a nitro compound", "fr:nitro"),
    GroupDef("nitrile", "nitrile group", "nitrile groups", "a nitrile", "fr:nitrile"),
    GroupDef("aldehyde", "aldehyde group", "aldehyde groups", "an aldehyde", "fr:aldehyde"),
    GroupDef("ketone", "ketone group", "ketone groups", "a ketone", "fr:ketone"),
    GroupDef(
        "phenol",
        "phenolic hydroxy group",
        "phenolic hydroxy groups",
        "a member of phenols",
        "fr:Ar_OH",
    ),
    GroupDef(
        "alcohol", "alcoholic hydroxy group", "alcoholic hydroxy groups", "an alcohol", "fr:Al_OH"
    ),
    GroupDef(
        "primary_amine",
        "primary amino group",
        "primary amino groups",
        "a primary amine",
        "fg:Amine.Primary",
    ),
    GroupDef(
        "secondary_amine",
        "secondary amino group",
        "secondary amino groups",
        "a secondary amine",
        "fg:Amine.Secondary",
    ),
    GroupDef(
        "tertiary_amine",
        "tertiary amino group",
        "tertiary amino groups",
        "a tertiary amine",
        "fg:Amine.Tertiary",
    ),
    GroupDef("azo", "azo group", "azo groups", "an azo compound", "fr:azo"),
    GroupDef("hydrazone", "hydrazone group", "hydrazone groups", "a hydrazone", "fr:hdrzone"),
    GroupDef(
        "hydrazine", "hydrazine group", "hydrazine groups", "a member of hydrazines", "fr:hdrzine"
    ),
    GroupDef("oxime", "oxime group", "oxime groups", "an oxime", "fr:oxime"),
    GroupDef(
        "guanidine", "guanidino group", "guanidino groups", "a member of guanidines", "fr:guanido"
    ),
    GroupDef("amidine", "amidine group", "amidine groups", "a carboxamidine", "fr:amidine"),
    GroupDef("imine", "imine group", "imine groups", "an imine", "fr:Imine"),
    GroupDef("thiol", "thiol group", "thiol groups", "a thiol", "fr:SH"),
    GroupDef("sulfide", "sulfide linkage", "sulfide linkages", "an organic sulfide", "fr:sulfide"),
    GroupDef(
        "phosphoric_acid",
        "phosphoric acid group",
        "phosphoric acid groups",
        "a phosphoric acid",
        "fr:phos_acid",
    ),
    GroupDef(
        "phosphate_ester",
        "phosphate ester group",
        "phosphate ester groups",
        "an organophosphate",
        "fr:phos_ester",
    ),
    GroupDef("epoxide", "epoxide ring", "epoxide rings", "an epoxide", "fr:epoxide"),
    GroupDef("azide", "azide group", "azide groups", "an azide", "fr:azide"),
    GroupDef("isocyanate", "isocyanate group", "isocyanate groups", "an isocyanate", "fr:isocyan"),
    GroupDef(
        "isothiocyanate",
        "isothiocyanate group",
        "isothiocyanate groups",
        "an isothiocyanate",
        "fr:isothiocyan",
    ),
    GroupDef(
        "thiocyanate", "thiocyanate group", "thiocyanate groups", "a thiocyanate", "fr:thiocyan"
    ),
    GroupDef(
        "alkyne",
        "terminal alkyne group",
        "terminal alkyne groups",
        "a terminal acetylenic compound",
        "fr:term_acetylene",
    ),
    GroupDef(
        "ether",
        "ether linkage",
        "ether linkages",
        "an ether",
        "smarts:[O;D2;!a;!$(O-[#6]=[O,S,N])]([#6])[#6]",
    ),
    GroupDef(
        "methoxy",
        "methoxy group",
        "methoxy groups",
        None,
        "smarts:[CH3][O;D2;!$(O-[#6]=[O,S,N])][#6]",
    ),
)

# A group whose count equals that of a more specific group it contains is not mentioned separately.
SUBSUMED_BY: dict[str, tuple[str, ...]] = {
    "ester": ("lactone",),
    "amide": ("lactam", "urea", "imide"),
    "ether": ("methoxy",),
}

# Named ring types (ring system vocabulary of ChEBI captions), counted as matches.
RINGS: tuple[tuple[str, str], ...] = (
    ("benzene", "fr:benzene"),
    ("pyridine", "fr:pyridine"),
    ("furan", "fr:furan"),
    ("thiophene", "fr:thiophene"),
    ("imidazole", "fr:imidazole"),
    ("thiazole", "fr:thiazole"),
    ("oxazole", "fr:oxazole"),
    ("piperidine", "fr:piperdine"),
    ("piperazine", "fr:piperzine"),
    ("morpholine", "fr:morpholine"),
    ("tetrazole", "fr:tetrazole"),
)

HALOGENS: dict[str, str] = {"F": "fluoro", "Cl": "chloro", "Br": "bromo", "I": "iodo"}
ELEMENT_NAMES: dict[str, str] = {
    "N": "nitrogen", "O": "oxygen", "S": "sulfur", "P": "phosphorus", "F": "fluorine", "Cl": "chlorine",
    "Br": "bromine", "I": "iodine", "B": "boron", "Si": "silicon", "Se": "selenium", "As": "arsenic",
    "Sn": "tin", "Hg": "mercury", "Na": "sodium", "K": "potassium", "Li": "lithium", "Fe": "iron",
    "Cu": "copper", "Zn": "zinc", "Pt": "platinum", "Ge": "germanium", "Te": "tellurium", "Sb": "antimony",
    "Bi": "bismuth", "Pb": "lead", "Al": "aluminium", "Mg": "magnesium", "Ca": "calcium", "Co": "cobalt",
    "Ni": "nickel", "Cr": "chromium", "Mn": "manganese", "Ti": "titanium", "Ag": "silver", "Au": "gold",
    "Pd": "palladium", "Ru": "ruthenium", "Rh": "rhodium", "Ga": "gallium", "Tl": "thallium", "Zr": "zirconium",
    "Cd": "cadmium", "Ce": "cerium", "Th": "thorium", "V": "vanadium", "Mo": "molybdenum", "W": "tungsten",
}  # fmt: skip


@functools.cache
def _pattern(source: str) -> Chem.Mol:
    """The query molecule for a ``fr:``/``fg:``/``smarts:`` source (compiled once per process)."""
    kind, _, name = source.partition(":")
    if kind == "fr":
        fn = getattr(Fragments, f"fr_{name}", None)
        if fn is None:
            raise ValueError(f"group source {source!r}: rdkit.Chem.Fragments has no fr_{name}")
        return inspect.signature(fn).parameters["pattern"].default  # the pattern Fragments compiled
    if kind == "fg":
        smarts = _functional_group_smarts()[name]
    elif kind == "smarts":
        smarts = name
    else:
        raise ValueError(f"group source {source!r} is not fr:/fg:/smarts:")
    pattern = Chem.MolFromSmarts(smarts)
    if pattern is None:
        raise ValueError(f"SMARTS {smarts!r} of {source!r} does not parse")
    return pattern


@functools.cache
def _functional_group_smarts() -> dict[str, str]:
    """``label -> SMARTS`` of every node of RDKit's functional group hierarchy."""
    out: dict[str, str] = {}
    stack = list(FunctionalGroups.BuildFuncGroupHierarchy())
    while stack:
        node = stack.pop()
        out[node.label] = node.smarts
        stack.extend(node.children)
    return out


def count_matches(mol: Chem.Mol, source: str) -> int:
    """Number of unique matches of a group source in ``mol``."""
    return len(mol.GetSubstructMatches(_pattern(source), uniquify=True, maxMatches=1000))


@dataclasses.dataclass(frozen=True)
class MoleculeFacts:
    """What a caption may say about a molecule; every field is computed by RDKit."""

    formula: str
    mol_weight: float
    heavy_atoms: int
    num_rings: int
    num_aromatic_rings: int
    ring_systems: tuple[int, ...]  # rings per ring system (fused systems have > 1)
    named_rings: tuple[tuple[str, int], ...]  # (ring name, count), RINGS order
    groups: tuple[tuple[str, int], ...]  # (group key, count), GROUPS order, subsumed removed
    halogens: tuple[tuple[str, int], ...]  # (element symbol, atom count)
    heteroatoms: tuple[str, ...]  # element symbols other than C and H, sorted
    net_charge: int
    num_stereocentres: int

    @property
    def group_counts(self) -> dict[str, int]:
        """``{group key: count}`` of the mentioned groups."""
        return dict(self.groups)


def _ring_systems(mol: Chem.Mol) -> tuple[int, ...]:
    """Number of SSSR rings in each ring system (rings sharing at least one atom), largest first."""
    systems: list[tuple[set[int], int]] = []
    for ring in mol.GetRingInfo().AtomRings():
        atoms, n_rings = set(ring), 1
        for other in [s for s in systems if s[0] & atoms]:
            systems.remove(other)
            atoms |= other[0]
            n_rings += other[1]
        systems.append((atoms, n_rings))
    return tuple(sorted((n for _atoms, n in systems), reverse=True))


def compute_facts(mol: Chem.Mol) -> MoleculeFacts:
    """All caption facts of ``mol`` (a sanitised RDKit molecule)."""
    counts = {g.key: count_matches(mol, g.source) for g in GROUPS}
    for general, specifics in SUBSUMED_BY.items():
        if counts[general] and counts[general] <= sum(counts[s] for s in specifics):
            counts[general] = 0
    symbols = [a.GetSymbol() for a in mol.GetAtoms()]
    halogen_atoms = [
        a.GetSymbol()
        for a in mol.GetAtoms()
        if a.GetSymbol() in HALOGENS and any(n.GetSymbol() == "C" for n in a.GetNeighbors())
    ]
    centres = Chem.FindMolChiralCenters(mol, includeUnassigned=True, useLegacyImplementation=False)
    return MoleculeFacts(
        formula=rdMolDescriptors.CalcMolFormula(mol),
        mol_weight=round(Descriptors.MolWt(mol), 2),
        heavy_atoms=mol.GetNumHeavyAtoms(),
        num_rings=mol.GetRingInfo().NumRings(),
        num_aromatic_rings=rdMolDescriptors.CalcNumAromaticRings(mol),
        ring_systems=_ring_systems(mol),
        named_rings=tuple((name, n) for name, src in RINGS if (n := count_matches(mol, src))),
        groups=tuple((g.key, counts[g.key]) for g in GROUPS if counts[g.key]),
        halogens=tuple((x, halogen_atoms.count(x)) for x in HALOGENS if x in halogen_atoms),
        heteroatoms=tuple(sorted({s for s in symbols if s not in ("C", "H")})),
        net_charge=Chem.GetFormalCharge(mol),
        num_stereocentres=len(centres),
    )
