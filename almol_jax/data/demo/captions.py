"""Captions in the register of ChEBI / L+M-24 ("The molecule is ...") written from RDKit facts.

``render_caption(facts, style)`` turns :class:`~almol_jax.data.demo.facts.MoleculeFacts` into 20-60
words. Each sentence states one fact, in one of several phrasings picked by a seeded
:class:`CaptionStyle`, so captions are not one fixed template yet are deterministic for a seed.
Every decision of a style (which opening, whether to state the heteroatoms, ...) is drawn from its
own stream, independent of the facts and of the other decisions: rendering two molecules' facts
with ONE style gives two captions that differ only where the facts differ (the demo's
smiles2caption rejections, build.py). The facts that most determine the structure come first
(class, formula, rings, groups); optional sentences (second class, fused system, named rings,
heteroatoms) are dropped first when a caption would exceed ``max_words``.
"""

from __future__ import annotations

import random

from almol_jax.data.demo.facts import ELEMENT_NAMES, GROUPS, HALOGENS, MoleculeFacts

_NUMBER_WORDS = (
    "no",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
)
_GROUP_BY_KEY = {g.key: g for g in GROUPS}
_RING_CLASS = {"benzene": "a member of benzenes", "pyridine": "a member of pyridines", "furan": "a member of furans",
               "thiophene": "a member of thiophenes", "imidazole": "a member of imidazoles",
               "thiazole": "a member of 1,3-thiazoles", "oxazole": "a member of 1,3-oxazoles",
               "piperidine": "a member of piperidines", "piperazine": "a member of piperazines",
               "morpholine": "a member of morpholines", "tetrazole": "a member of tetrazoles"}  # fmt: skip

OPENINGS = (
    "The molecule is {cls} with the molecular formula {formula}.",
    "The molecule is {cls} of molecular formula {formula}.",
    "The molecule is {cls} whose molecular formula is {formula}.",
    "The molecule is {cls}; its formula is {formula}.",
)
ACYCLIC = ("It is acyclic.", "It contains no rings.", "It has no rings.")
ONE_RING = (
    "It has one ring, which is {not_}aromatic.",
    "It contains a single {non_}aromatic ring.",
)
RINGS_SOME = (
    "It has {n} {rings}, {k} of them aromatic.",
    "It contains {n} {rings} ({k} aromatic).",
    "Its ring count is {n}, with {k} aromatic.",
)
ALSO_CLASS = ("It is also {cls}.", "It can also be classed as {cls}.")
FUSED = (
    "Its largest ring system is fused from {n} rings.",
    "It has a fused ring system of {n} rings.",
)
NAMED_RINGS = ("Its rings include {items}.", "Among its rings {are} {items}.")
GROUPS_SENT = (
    "It bears {items}.",
    "It carries {items}.",
    "Its functional groups include {items}.",
    "It has {items}.",
)
CHARGE = (
    "It carries a net charge of {c}.",
    "Its net charge is {c}.",
    "It has an overall charge of {c}.",
)
STEREO = ("It has {n} {centres}.", "It contains {n} {centres}.", "The structure has {n} {centres}.")
HETERO = ("Apart from carbon and hydrogen it contains {items}.", "Its heteroatoms are {items}.")
HYDROCARBON = ("It contains only carbon and hydrogen.", "It is made of carbon and hydrogen only.")
WEIGHT = (
    "Its molecular weight is {mw:.1f}.",
    "It has a molecular weight of {mw:.1f} g/mol.",
    "Its molar mass is {mw:.1f} g/mol.",
)


class CaptionStyle:
    """The phrasing decisions of a caption, each from its own stream seeded by (seed, decision)."""

    def __init__(self, seed: str):
        self.seed = seed

    def _rng(self, decision: str) -> random.Random:
        return random.Random(f"{self.seed}:{decision}")

    def choice(self, decision: str, options: tuple[str, ...]) -> str:
        """One of ``options`` (the same index for every caption of this style)."""
        return self._rng(decision).choice(options)

    def coin(self, decision: str) -> float:
        """A uniform [0, 1) draw (the same for every caption of this style)."""
        return self._rng(decision).random()


def number_word(n: int) -> str:
    """``0 -> "no"``, 1..12 as words, larger numbers as digits."""
    if n < 0:
        raise ValueError(f"{n=} is not a count")
    return _NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else str(n)


def article(phrase: str) -> str:
    """``phrase`` with "a" or "an" in front."""
    vowel_sound = phrase[0] in "aeiou" and not phrase.startswith(("urea", "uni", "use"))
    return ("an " if vowel_sound else "a ") + phrase


def counted(n: int, singular: str, plural: str) -> str:
    """``"a ketone group"``, ``"two ketone groups"``."""
    return article(singular) if n == 1 else f"{number_word(n)} {plural}"


def join_list(items: list[str]) -> str:
    """``"a, b and c"``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def class_phrases(facts: MoleculeFacts) -> list[str]:
    """Class-like phrases true of the molecule, most specific first."""
    out = [c for key, _n in facts.groups if (c := _GROUP_BY_KEY[key].class_phrase)]
    out += [f"an organo{HALOGENS[x].removesuffix('o')}ine compound" for x, _n in facts.halogens]
    out += [_RING_CLASS[name] for name, _n in facts.named_rings]
    if not facts.heteroatoms:
        out.append("a hydrocarbon")
    out.append(
        "an aromatic compound"
        if facts.num_aromatic_rings
        else ("a cyclic compound" if facts.num_rings else "an acyclic compound")
    )
    seen: set[str] = set()
    return [c for c in out if not (c in seen or seen.add(c))]


def group_items(facts: MoleculeFacts, max_items: int) -> list[str]:
    """Counted group phrases (halogens as substituents), priority order, at most ``max_items``."""
    items = [
        counted(n, _GROUP_BY_KEY[k].singular, _GROUP_BY_KEY[k].plural) for k, n in facts.groups
    ]
    items += [
        counted(n, f"{HALOGENS[x]} substituent", f"{HALOGENS[x]} substituents")
        for x, n in facts.halogens
    ]
    return items[:max_items]


def _rings_sentence(facts: MoleculeFacts, style: CaptionStyle) -> str:
    """Ring count and aromatic ring count."""
    if facts.num_rings == 0:
        return style.choice("acyclic", ACYCLIC)
    n, k = facts.num_rings, facts.num_aromatic_rings
    if n == 1:
        return style.choice("one_ring", ONE_RING).format(
            not_="" if k else "not ", non_="" if k else "non-"
        )
    k_word = "none" if k == 0 else ("all" if k == n and n > 1 else number_word(k))
    return style.choice("rings", RINGS_SOME).format(
        n=number_word(n), rings="ring" if n == 1 else "rings", k=k_word
    )


def render_caption(
    facts: MoleculeFacts, style: CaptionStyle, *, max_words: int = 60, max_groups: int = 4
) -> str:
    """A caption of ``facts``; phrasings and optional sentences are drawn from ``style``."""
    if max_words < 12:
        raise ValueError(f"{max_words=} leaves no room for the formula and ring sentences")
    classes = class_phrases(facts)
    core = [
        style.choice("opening", OPENINGS).format(cls=classes[0], formula=facts.formula),
        _rings_sentence(facts, style),
    ]
    items = group_items(facts, max_groups)
    if items:
        core.append(style.choice("groups", GROUPS_SENT).format(items=join_list(items)))
    # Optional sentences, in the order they are dropped when the caption is too long.
    optional: list[tuple[int, str]] = []
    if facts.heteroatoms and style.coin("hetero?") < 0.5:
        names = [ELEMENT_NAMES.get(x, x) for x in facts.heteroatoms]
        options = HETERO if len(names) > 1 else (HETERO[0], "Its only heteroatom is {items}.")
        optional.append((8, style.choice("hetero", options).format(items=join_list(names))))
    elif not facts.heteroatoms:
        optional.append((8, style.choice("hydrocarbon", HYDROCARBON)))
    if facts.named_rings and style.coin("named_rings?") < 0.7:
        ring_items = [counted(n, f"{name} ring", f"{name} rings") for name, n in facts.named_rings]
        are = "is" if len(ring_items) == 1 and facts.named_rings[0][1] == 1 else "are"
        optional.append(
            (
                5,
                style.choice("named_rings", NAMED_RINGS).format(
                    items=join_list(ring_items), are=are
                ),
            )
        )
    if facts.ring_systems and facts.ring_systems[0] > 1 and style.coin("fused?") < 0.6:
        optional.append(
            (4, style.choice("fused", FUSED).format(n=number_word(facts.ring_systems[0])))
        )
    if len(classes) > 1 and style.coin("also_class?") < 0.5:
        optional.append((2, style.choice("also_class", ALSO_CLASS).format(cls=classes[1])))
    tail = []
    if facts.net_charge:
        tail.append(style.choice("charge", CHARGE).format(c=f"{facts.net_charge:+d}"))
    if facts.num_stereocentres:
        n = facts.num_stereocentres
        centres = style.choice("centres", ("stereocentre", "stereogenic centre"))
        tail.append(
            style.choice("stereo", STEREO).format(
                n=number_word(n), centres=centres if n == 1 else centres + "s"
            )
        )
    weight = style.choice("weight", WEIGHT).format(mw=facts.mol_weight)

    def assemble() -> list[str]:
        ordered = sorted(optional, key=lambda p: -p[0])  # class, fused, rings, heteroatoms
        return core + [s for _p, s in reversed(ordered)] + tail + [weight]

    sentences = assemble()
    while optional and sum(len(s.split()) for s in sentences) > max_words:
        optional.remove(max(optional, key=lambda p: p[0]))
        sentences = assemble()
    while len(items) > 1 and sum(len(s.split()) for s in sentences) > max_words:
        items = items[:-1]
        core[2] = GROUPS_SENT[2].format(items=join_list(items))  # "include": a partial list
        sentences = assemble()
    return " ".join(sentences)
