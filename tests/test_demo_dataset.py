"""Tests of the embedded demo dataset: determinism, scaffold-disjoint splits, rejections, caption
truth (each caption parsed and checked against facts recomputed here with RDKit), the report, and
the SentencePiece tokenizer loaded through transformers.

Builds use the first 300 NCI molecules (about 2 s each).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem, DataStructs
from rdkit.Chem import Fragments, rdFingerprintGenerator
from rdkit.Chem.Scaffolds import MurckoScaffold

from almol_jax.data.demo import DemoParams, build_demo_dataset
from almol_jax.data.demo.build import ALMOL_PROMPT_TEXTS
from almol_jax.data.demo.molecules import load_molecules, nci_path
from almol_jax.data.demo.neighbours import nearest_neighbours
from almol_jax.data.demo.scaffold_split import scaffold_split

SPLITS = ("train", "validation", "test")
LIMIT = 300


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The same 300-molecule dataset built twice into two cache folders."""
    params = DemoParams(limit=LIMIT, seed=0, vocab_size=600)
    a = build_demo_dataset(params, tmp_path_factory.mktemp("cache_a"), progress=False)
    b = build_demo_dataset(params, tmp_path_factory.mktemp("cache_b"), progress=False)
    return a, b


def test_two_builds_are_identical_and_cached(built):
    a, b = built
    assert a.root.name == b.root.name  # same version hash
    for split in SPLITS:
        assert a.preferences[split].read_bytes() == b.preferences[split].read_bytes()
        assert a.pairs[split].read_bytes() == b.pairs[split].read_bytes()
    assert (a.tokenizer_dir / "tokenizer.model").read_bytes() == (
        b.tokenizer_dir / "tokenizer.model"
    ).read_bytes()
    mtime = a.report.stat().st_mtime_ns
    again = build_demo_dataset(
        DemoParams(limit=LIMIT, seed=0, vocab_size=600), a.root.parent, progress=False
    )
    assert again.root == a.root and again.report.stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_another_seed_changes_phrasing_not_facts(built, tmp_path):
    a, _ = built
    c = build_demo_dataset(
        DemoParams(limit=LIMIT, seed=1, vocab_size=600), tmp_path, progress=False
    )
    assert c.root.name != a.root.name
    caps_a = {r["SMILES"]: r["description"] for s in SPLITS for r in read_jsonl(a.pairs[s])}
    caps_c = {r["SMILES"]: r["description"] for s in SPLITS for r in read_jsonl(c.pairs[s])}
    assert caps_a.keys() == caps_c.keys()
    differing = sum(caps_a[k] != caps_c[k] for k in caps_a)
    assert differing > 0.5 * len(caps_a)
    formula = re.compile(r"formula (?:is )?(\S+?)\.(?:\s|$)")
    assert all(formula.search(caps_a[k])[1] == formula.search(caps_c[k])[1] for k in caps_a)


def murcko(smiles: str) -> str:
    """Scaffold recomputed here through a different RDKit entry point than the library's."""
    core = MurckoScaffold.GetScaffoldForMol(Chem.MolFromSmiles(smiles))
    return Chem.MolToSmiles(core) if core.GetNumAtoms() else ""


def test_no_scaffold_is_shared_across_splits(built):
    a, _ = built
    scaffolds = {s: {murcko(r["SMILES"]) for r in read_jsonl(a.pairs[s])} for s in SPLITS}
    assert not scaffolds["train"] & scaffolds["validation"]
    assert not scaffolds["train"] & scaffolds["test"]
    assert not scaffolds["validation"] & scaffolds["test"]
    assert all(len(scaffolds[s]) > 0 for s in SPLITS)


def test_triplets_format_and_rejections(built):
    a, _ = built
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    for split in SPLITS:
        pairs = read_jsonl(a.pairs[split])
        caption_of = {p["SMILES"]: p["description"] for p in pairs}
        rows = read_jsonl(a.preferences[split])
        assert len(rows) == 2 * len(pairs)
        assert all(set(r) == {"source", "chosen", "rejected", "direction"} for r in rows)
        s2c = [r for r in rows if r["direction"] == "smiles2caption"]
        c2s = [r for r in rows if r["direction"] == "caption2smiles"]
        assert len(s2c) == len(c2s) == len(pairs)
        assert all(r["rejected"] != r["chosen"] for r in rows)
        # caption2smiles: the rejected SMILES is the most similar other molecule of the split.
        fps = {s: gen.GetFingerprint(Chem.MolFromSmiles(s)) for s in caption_of}
        for r in c2s[:40]:
            assert caption_of[r["chosen"]] == r["source"] and r["rejected"] in caption_of
            best = max(
                DataStructs.TanimotoSimilarity(fps[r["chosen"]], fps[s])
                for s in fps
                if s != r["chosen"]
            )
            got = DataStructs.TanimotoSimilarity(fps[r["chosen"]], fps[r["rejected"]])
            np.testing.assert_allclose(got, best, rtol=0, atol=1e-12)
        # smiles2caption: gold caption chosen; the rejected caption states the facts of the same
        # neighbour (checked against RDKit), phrased in the gold caption's style: same opening
        # connective and the same weight sentence wording as the chosen caption
        neighbour = {r["chosen"]: r["rejected"] for r in c2s}
        for r in s2c:
            assert caption_of[r["source"]] == r["chosen"]
            assert check_caption(neighbour[r["source"]], r["rejected"]) >= 3
            assert _opening(r["rejected"]) == _opening(r["chosen"])
            assert _weight_phrase(r["rejected"]) == _weight_phrase(r["chosen"])


def _opening(caption: str) -> str:
    """Which of the opening sentence's connectives (captions.OPENINGS) a caption uses."""
    return next(c for c in ("with the molecular", "of molecular", "whose", "; its") if c in caption)


def _weight_phrase(caption: str) -> str:
    return re.search(r"(weight is|weight of|mass is)", caption)[1]


def test_report_counts_match_files(built):
    a, _ = built
    report = json.loads(a.report.read_text())
    m = report["molecules"]
    assert m["input_rows"] == LIMIT
    assert m["kept"] == m["input_rows"] - m["invalid"] - m["duplicates"]
    for split in SPLITS:
        n = len(read_jsonl(a.pairs[split]))
        assert report["splits"][split]["molecules"] == n
        assert report["splits"][split]["triplets"] == 2 * n
    assert sum(report["splits"][s]["molecules"] for s in SPLITS) == m["kept"]
    assert report["seconds"]["total"] < 30


def test_nci_counts_are_independent_golden():
    """Invalid and duplicate counts of the whole NCI file, recomputed here without the library."""
    from rdkit import RDLogger
    from rdkit.Chem.MolStandardize import rdMolStandardize

    RDLogger.DisableLog("rdApp.*")
    rows = [line.split()[0] for line in nci_path().read_text().splitlines() if line.strip()]
    chooser = rdMolStandardize.LargestFragmentChooser(preferOrganic=True)
    invalid, inchis = 0, []
    for smi in rows:
        mol = Chem.MolFromSmiles(smi)
        mol = chooser.choose(mol) if mol is not None else None
        inchi = Chem.MolToInchi(mol) if mol is not None and mol.GetNumAtoms() else ""
        if not inchi:
            invalid += 1
        else:
            inchis.append(inchi)
    RDLogger.EnableLog("rdApp.*")
    molecules, counts = load_molecules()
    assert counts.input_rows == len(rows) == 4999
    assert counts.invalid == invalid
    assert counts.duplicates == len(inchis) - len(set(inchis))
    assert counts.kept == len(molecules) == len(set(inchis))
    assert len({m.inchi for m in molecules}) == len(molecules)


# ---- caption truth: parse each caption, recompute every stated fact here -------------------------

NUMBERS = {
    "no": 0,
    "none": 0,
    "a": 1,
    "an": 1,
    "one": 1,
    "single": 1,
    "two": 2,
    "three": 3,
    "four": 4,
}
NUMBERS |= {
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
}


NUM = r"(" + "|".join(NUMBERS) + r"|\d+)"  # a count word, so "phosphate ester" is not "<n> ester"


def num(word: str) -> int:
    return NUMBERS[word] if word in NUMBERS else int(word)


ELEMENT_NAME_TO_SYMBOL = {
    "nitrogen": "N",
    "oxygen": "O",
    "sulfur": "S",
    "phosphorus": "P",
    "fluorine": "F",
}
ELEMENT_NAME_TO_SYMBOL |= {
    "chlorine": "Cl",
    "bromine": "Br",
    "iodine": "I",
    "boron": "B",
    "silicon": "Si",
}

# group phrase in the caption -> count recomputed here (RDKit fragment functions or SMARTS of this test)
AMINE_SMARTS = {
    "primary amino": "[N;H2;D1;$(N-!@[#6]);!$(N-C=[O,N,S])]",
    "secondary amino": "[N;H1;D2;$(N(-[#6])-[#6]);!$(N-C=[O,N,S])]",
    "tertiary amino": "[N;H0;D3;$(N(-[#6])(-[#6])-[#6]);!$(N-C=[O,N,S])]",
}
GROUP_COUNTERS = {
    "carboxylic acid group": Fragments.fr_COO,
    "ester group": Fragments.fr_ester,
    "lactone ring": Fragments.fr_lactone,
    "amide group": Fragments.fr_amide,
    "nitro group": Fragments.fr_nitro,
    "nitrile group": Fragments.fr_nitrile,
    "ketone group": Fragments.fr_ketone,
    "aldehyde group": Fragments.fr_aldehyde,
    "phenolic hydroxy group": Fragments.fr_Ar_OH,
    "alcoholic hydroxy group": Fragments.fr_Al_OH,
    "sulfonamide group": Fragments.fr_sulfonamd,
    "azo group": Fragments.fr_azo,
    "urea group": Fragments.fr_urea,
    "thiol group": Fragments.fr_SH,
    "oxime group": Fragments.fr_oxime,
}


def smarts_counter(smarts: str):
    pattern = Chem.MolFromSmarts(smarts)
    return lambda mol: len(mol.GetSubstructMatches(pattern))


GROUP_COUNTERS |= {f"{k} group": smarts_counter(v) for k, v in AMINE_SMARTS.items()}
RING_COUNTERS = {
    "benzene": Fragments.fr_benzene,
    "pyridine": Fragments.fr_pyridine,
    "furan": Fragments.fr_furan,
}
CLASS_CHECKS = {
    "a carboxylic acid": Fragments.fr_COO,
    "a nitro compound": Fragments.fr_nitro,
    "a ketone": Fragments.fr_ketone,
    "a member of phenols": Fragments.fr_Ar_OH,
    "an amide": Fragments.fr_amide,
    "a carboxylic ester": Fragments.fr_ester,
    "a member of benzenes": Fragments.fr_benzene,
    "a nitrile": Fragments.fr_nitrile,
}


def hill_formula(mol: Chem.Mol) -> str:
    """Hill-order formula with a trailing charge sign, counted here atom by atom (RDKit's convention)."""
    counts: dict[str, int] = {}
    for atom in mol.GetAtoms():
        counts[atom.GetSymbol()] = counts.get(atom.GetSymbol(), 0) + 1
        counts["H"] = counts.get("H", 0) + atom.GetTotalNumHs()
    order = ["C", "H"] + sorted(
        k for k in counts if k not in ("C", "H")
    )  # RDKit also puts H first without C
    text = "".join(f"{el}{counts[el] if counts[el] > 1 else ''}" for el in order if counts.get(el))
    charge = sum(a.GetFormalCharge() for a in mol.GetAtoms())
    return text + (
        ""
        if charge == 0
        else ("+" if charge > 0 else "-") + (str(abs(charge)) if abs(charge) > 1 else "")
    )


def ring_counts(mol: Chem.Mol) -> tuple[int, int, int]:
    """(rings, aromatic rings by bonds, largest ring system in rings), computed here."""
    info = mol.GetRingInfo()
    rings = info.BondRings()
    aromatic = sum(all(mol.GetBondWithIdx(b).GetIsAromatic() for b in ring) for ring in rings)
    atom_rings = [set(r) for r in info.AtomRings()]
    parent = list(range(len(atom_rings)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(atom_rings)):
        for j in range(i):
            if atom_rings[i] & atom_rings[j]:
                parent[find(i)] = find(j)
    sizes: dict[int, int] = {}
    for i in range(len(atom_rings)):
        sizes[find(i)] = sizes.get(find(i), 0) + 1
    return len(rings), aromatic, max(sizes.values(), default=0)


def mol_weight(mol: Chem.Mol) -> float:
    table = Chem.GetPeriodicTable()
    return sum(
        table.GetAtomicWeight(a.GetAtomicNum()) + a.GetTotalNumHs() * table.GetAtomicWeight(1)
        for a in mol.GetAtoms()
    )


def check_caption(smiles: str, caption: str) -> int:
    """Assert every fact the caption states; return how many facts were checked."""
    mol = Chem.MolFromSmiles(smiles)
    checked = 0
    assert caption.startswith("The molecule is ")
    assert 10 <= len(caption.split()) <= 60, caption
    formula = re.search(r"formula (?:is )?(\S+?)\.(?:\s|$)", caption)[1]
    assert formula == hill_formula(mol), (smiles, caption)
    n_rings, n_arom, largest = ring_counts(mol)
    if re.search(r"acyclic|no rings", caption):
        assert n_rings == 0, caption
    elif m := re.search(
        r"one ring, which is (not )?aromatic|a single (non-)?aromatic ring", caption
    ):
        assert (n_rings, n_arom) == (1, 0 if (m[1] or m[2]) else 1), caption
    else:
        m = re.search(
            r"(\w+) rings(?:, (\w+) of them aromatic| \((\w+) aromatic\))|ring count is (\w+), with (\w+) aromatic",
            caption,
        )
        total = num(m[1] or m[4])
        arom_word = m[2] or m[3] or m[5]
        assert total == n_rings, caption
        assert (n_arom == n_rings) if arom_word == "all" else (num(arom_word) == n_arom), caption
    checked += 2
    if m := re.search(r"fused (?:from|ring system of) (\w+) rings", caption):
        assert num(m[1]) == largest, caption
        checked += 1
    for phrase, counter in GROUP_COUNTERS.items():
        for m in re.finditer(rf"\b{NUM} {phrase}s?\b", caption):
            assert num(m[1]) == counter(mol), (phrase, smiles, caption)
            checked += 1
    for name, counter in RING_COUNTERS.items():
        for m in re.finditer(rf"\b{NUM} {name} rings?\b", caption):
            assert num(m[1]) == counter(mol), (name, smiles, caption)
            checked += 1
    for prefix, symbol in (("fluoro", "F"), ("chloro", "Cl"), ("bromo", "Br"), ("iodo", "I")):
        if m := re.search(rf"\b{NUM} {prefix} substituents?", caption):
            n = sum(
                a.GetSymbol() == symbol and any(x.GetSymbol() == "C" for x in a.GetNeighbors())
                for a in mol.GetAtoms()
            )
            assert num(m[1]) == n, caption
            checked += 1
    cls = re.match(r"The molecule is (an? [\w ,\-]+?)(?: with| of| whose|;)", caption)[1]
    if cls in CLASS_CHECKS:
        assert CLASS_CHECKS[cls](mol) > 0, caption
        checked += 1
    if m := re.search(r"charge (?:of |is )([+-]\d+)", caption):
        assert int(m[1]) == sum(a.GetFormalCharge() for a in mol.GetAtoms()), caption
        checked += 1
    if m := re.search(rf"\b{NUM} (?:stereocentres?|stereogenic centres?)", caption):
        found = Chem.FindMolChiralCenters(
            mol, includeUnassigned=True, useLegacyImplementation=False
        )
        assert num(m[1]) == len(found), caption
        checked += 1
    hetero = {a.GetSymbol() for a in mol.GetAtoms()} - {"C", "H"}
    if m := re.search(
        r"(?:Apart from carbon and hydrogen it contains|Its heteroatoms are|Its only heteroatom is) ([\w ,]+)\.",
        caption,
    ):
        names = re.split(r", | and ", m[1])
        if all(n in ELEMENT_NAME_TO_SYMBOL for n in names):
            assert {ELEMENT_NAME_TO_SYMBOL[n] for n in names} == hetero, caption
            checked += 1
    if "only carbon and hydrogen" in caption or "carbon and hydrogen only" in caption:
        assert not hetero, caption
        checked += 1
    weight = float(re.search(r"(?:weight is|weight of|mass is) (\d+\.\d)", caption)[1])
    np.testing.assert_allclose(weight, mol_weight(mol), rtol=0, atol=0.06)
    return checked + 1


def test_every_caption_states_true_facts(built):
    a, _ = built
    pairs = [r for s in SPLITS for r in read_jsonl(a.pairs[s])]
    checked = sum(check_caption(p["SMILES"], p["description"]) for p in pairs)
    assert checked > 5 * len(pairs)  # the parser really found the facts


def test_caption_check_catches_a_false_fact(built):
    a, _ = built
    pair = read_jsonl(a.pairs["train"])[0]
    with pytest.raises(AssertionError):
        check_caption("CCO", pair["description"])  # another molecule's caption is false of ethanol


# ---- units ---------------------------------------------------------------------------------------


def test_scaffold_split_keeps_groups_together_and_sizes():
    scaffolds = ["big"] * 50 + [f"s{i // 3}" for i in range(60)]  # one large group + 20 groups of 3
    out = scaffold_split(scaffolds, fractions=(0.8, 0.1, 0.1), seed=3)
    assert sorted(sum(out.values(), [])) == list(range(110))
    assert set(range(50)) <= set(out["train"])
    for name in ("validation", "test"):
        assert 0 < len(out[name]) <= 11
        groups = {scaffolds[i] for i in out[name]}
        assert sum(scaffolds.count(g) for g in groups) == len(out[name])  # whole groups only
    assert out == scaffold_split(scaffolds, fractions=(0.8, 0.1, 0.1), seed=3)
    with pytest.raises(ValueError, match="fractions"):
        scaffold_split(scaffolds, fractions=(0.8, 0.3, 0.1))


def test_nearest_neighbours_match_brute_force_numpy():
    smiles = ["CCO", "CCCO", "CCCCO", "c1ccccc1", "c1ccccc1C", "c1ccccc1CC", "CC(=O)O", "CCC(=O)O"]
    captions = [f"caption {i}" for i in range(len(smiles))]
    captions[1] = captions[0]  # equal captions: "CCCO" may not be the rejection of "CCO"
    nb, sim = nearest_neighbours(smiles, captions)
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    bits = np.array(
        [gen.GetFingerprintAsNumPy(Chem.MolFromSmiles(s)) for s in smiles], dtype=np.float64
    )
    inter = bits @ bits.T
    tanimoto = inter / (bits.sum(1)[:, None] + bits.sum(1)[None, :] - inter)
    for i in range(len(smiles)):
        allowed = [j for j in range(len(smiles)) if j != i and captions[j] != captions[i]]
        best = max(allowed, key=lambda j: (tanimoto[i, j], -j))
        assert nb[i] == best
        np.testing.assert_allclose(sim[i], tanimoto[i, best], rtol=0, atol=1e-12)


def test_bad_parameters_name_the_value():
    with pytest.raises(ValueError, match="vocab_size=100"):
        DemoParams(vocab_size=100)
    with pytest.raises(ValueError, match="limit=3"):
        DemoParams(limit=3)


# ---- tokenizer -----------------------------------------------------------------------------------


def test_tokenizer_loads_with_transformers_and_round_trips(built):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    a, _ = built
    tok = AutoTokenizer.from_pretrained(str(a.tokenizer_dir))
    assert "Llama" in type(tok).__name__
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)
    assert len(tok) == 600
    sp = spm.SentencePieceProcessor(model_file=str(a.tokenizer_dir / "tokenizer.model"))
    texts = [t for r in read_jsonl(a.preferences["test"])[:100] for t in (r["source"], r["chosen"])]
    texts += [
        "Below is an instruction.\n\n### Instruction:\nMolecule: C[C@@H](N)C(=O)O \nIn that",
        "unseen ü ☃ 🙂 text  with  double spaces\tand tab",
    ]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == sp.encode(text)  # transformers' conversion agrees with sentencepiece itself
        assert tok.decode(ids) == text
        assert 0 not in ids  # byte fallback: nothing is <unk>
    assert tok("CCO")["input_ids"][0] != tok.bos_token_id  # the pipeline adds BOS itself
    # compact: the prompt templates (weighted in the training text) and captions cost few tokens
    for template in ALMOL_PROMPT_TEXTS:
        assert len(sp.encode(template)) < 0.25 * len(template.encode()), template
    caption = read_jsonl(a.pairs["train"])[0]["description"]
    assert len(tok.encode(caption, add_special_tokens=False)) < 0.6 * len(caption.encode())
