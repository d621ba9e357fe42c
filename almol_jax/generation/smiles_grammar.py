"""The SMILES grammar as a character automaton that runs on device, one jnp step per character.

`char_step(state, ch)` reads one ASCII character and returns the next `GrammarState`: a phase (the
class of the last character: start, after an atom, after a bond, after '(', inside a bracket atom,
after '%', ...), the branch depth with a stack of the branch-point atoms, the open ring-closure
labels (0-9 and %10-%99) with the atom that opened each, and the valence used and allowed of the
current atom (organic subset from RDKit's valence lists; bracket atoms from their element, charge
and explicit H). A syntax error sets `bad` (the row is dead); a valence excess adds to `vbad` (the
mask treats it as forbidden, the state update only records it). Ring closures that RDKit rejects
(a label closed on the atom that opened it, on that atom's neighbour, or twice between the same two
atoms) are syntax errors. `complete(state)` says whether the text so far is a whole SMILES.

Everything is elementwise on int32 scalars and small arrays, so `jax.vmap` runs it over rows and
over candidate tokens; `run_chars` scans a token's characters (0 = padding, a no-op). The stack
depth D and the label count R are the shapes of the state's arrays (`initial_state(depth, labels)`).
Unsupported on purpose: chirality classes (@TH1, @OH2, ...), %(nnn) labels, %0n, H counts or
charges of two digits, isotopes of four digits, atom classes of three digits or starting with 0,
and a space anywhere but before the first atom.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from almol_jax.generation.smiles_elements import LETTERS, UNCONSTRAINED, element_tables

PHASES = (
    "START START_SP ATOM ATOM_B ATOM_C BOND BOND_BS OPEN OPEN_BOND OPEN_BOND_BS DOT PCT PCT1 "
    "B_OPEN B_ISO B_SYM1 B_SYM B_CHIR1 B_CHIR2 B_H B_HD B_CHG B_CHG2 B_CHGD B_CLS B_CLSD "
    "B_ISO2 B_ISO3 B_CLSD2"
).split()
(START, START_SP, ATOM, ATOM_B, ATOM_C, BOND, BOND_BS, OPEN, OPEN_BOND, OPEN_BOND_BS, DOT, PCT) = (
    range(12)
)
(PCT1, B_OPEN, B_ISO, B_SYM1, B_SYM, B_CHIR1, B_CHIR2, B_H, B_HD, B_CHG, B_CHG2) = range(12, 23)
(B_CHGD, B_CLS, B_CLSD, B_ISO2, B_ISO3, B_CLSD2) = range(23, 29)
BRACKET_PHASES = tuple(range(B_OPEN, B_CLSD2 + 1))
# Tokens that always suffice to finish what the phase started (an atom after a bond or '(',
# ']' and at most a symbol inside a bracket atom, the digits after '%'; `distance` adds the ring
# they open when no open label can close).
PHASE_NEEDS = np.array([1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 1, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 2])
PHASE_NEEDS = np.concatenate([PHASE_NEEDS, [1, 2, 2, 1]])
PARTNERS = 6  # ring partners remembered per atom (duplicate ring bonds are checked against them)


class GrammarState(NamedTuple):
    """One row's automaton state (int32; arrays: [PARTNERS], [D], [D, PARTNERS], [R])."""

    ph: jax.Array
    bad: jax.Array
    vbad: jax.Array  # valence excesses so far (a token is allowed only if it adds none)
    depth: jax.Array
    natoms: jax.Array
    cur_id: jax.Array
    cur_par: jax.Array
    cur_used: jax.Array
    cur_max: jax.Array
    pb: jax.Array  # pending bond order (0 = none)
    pct: jax.Array  # first digit after '%'
    aux: jax.Array  # B_SYM1: the first letter's index
    b_anchor: jax.Array  # bracket atom: bonds to the current atom
    b_z: jax.Array  # bracket atom: element (0 = '*', -1 = not yet an element)
    b_h: jax.Array
    b_chg: jax.Array
    partners: jax.Array
    st_id: jax.Array
    st_par: jax.Array
    st_used: jax.Array
    st_max: jax.Array
    st_partners: jax.Array
    opener: jax.Array
    opener_par: jax.Array  # [R]: the parent of each label's opener (a child of the current atom)


def initial_state(depth: int = 32, labels: int = 100) -> GrammarState:
    """The state before the first character (no atom yet)."""
    z = np.int32(0)
    scalars = dict(ph=z, bad=z, vbad=z, depth=z, natoms=z, cur_id=np.int32(-1))
    scalars.update(cur_par=np.int32(-1), cur_used=z, cur_max=np.int32(UNCONSTRAINED), pb=z, pct=z)
    scalars.update(aux=z, b_anchor=z, b_z=np.int32(-1), b_h=z, b_chg=z)
    return GrammarState(
        **{k: jnp.asarray(v) for k, v in scalars.items()},
        partners=jnp.full((PARTNERS,), -1, jnp.int32),
        st_id=jnp.full((depth,), -1, jnp.int32),
        st_par=jnp.full((depth,), -1, jnp.int32),
        st_used=jnp.zeros((depth,), jnp.int32),
        st_max=jnp.full((depth,), UNCONSTRAINED, jnp.int32),
        st_partners=jnp.full((depth, PARTNERS), -1, jnp.int32),
        opener=jnp.full((labels,), -1, jnp.int32),
        opener_par=jnp.full((labels,), -1, jnp.int32),
    )


def _is(ph, *phases):
    out = ph == phases[0]
    for p in phases[1:]:
        out = out | (ph == p)
    return out


def _bracket_valence(t, z, chg, h):
    """Bonds a bracket atom may make: the valence of its isoelectronic element, less its H."""
    eff = z - chg
    known = (z > 0) & (eff >= 1) & (eff <= 118)
    maxv = jnp.asarray(t["max_valence"])[jnp.clip(eff, 0, 118)]
    return jnp.where(known & (maxv < UNCONSTRAINED), maxv - h, UNCONSTRAINED)


def _sync_top(s: GrammarState, add):
    """Adds `add` bonds to the stacked copy of the current atom when it is a branch point."""
    top = jnp.clip(s.depth - 1, 0, s.st_used.shape[0] - 1)
    same = (s.depth > 0) & (s.st_id[top] == s.cur_id)
    return s.st_used.at[top].add(jnp.where(same, add, 0))


def _ring(s: GrammarState, label, on):
    """A ring-closure digit on the current atom: opens `label`, or closes it (checking RDKit's
    duplicate-bond rules). Returns (opener, opener_par, partners, bond order, dup, valence_fail)."""
    label = jnp.clip(label, 0, s.opener.shape[0] - 1)
    b = jnp.where(on, jnp.where(s.pb > 0, s.pb, 1), 0)
    vfail = on & (s.cur_max - s.cur_used < b)
    o = s.opener[label]
    closing = on & (o >= 0)
    child = s.opener_par[label] == s.cur_id  # the opener is bonded to this atom as its child
    dup = closing & ((o == s.cur_id) | (o == s.cur_par) | jnp.any(s.partners == o) | child)
    new_o = jnp.where(on, jnp.where(closing, -1, s.cur_id), o)
    opener = s.opener.at[label].set(new_o)
    opener_par = s.opener_par.at[label].set(jnp.where(on, s.cur_par, s.opener_par[label]))
    free = jnp.argmax(s.partners < 0)
    partners = s.partners.at[free].set(jnp.where(closing, o, s.partners[free]))
    return opener, opener_par, partners, b, dup, vfail


def _bracket_events(s: GrammarState, c, t) -> dict:
    """The events of a character inside a bracket atom:
    [isotope] symbol [@|@@] [H[n]] [+|-|++|--|+n|-n] [:class] ]"""
    digit = (c >= ord("0")) & (c <= ord("9"))
    d = c - ord("0")
    upper = (c >= ord("A")) & (c <= ord("Z"))
    lower = (c >= ord("a")) & (c <= ord("z"))
    letter = jnp.clip(jnp.where(upper, c - ord("A"), 26 + c - ord("a")), 0, LETTERS - 1)
    ph = s.ph
    b_open = _is(ph, B_OPEN, B_ISO, B_ISO2, B_ISO3)
    e_iso = _is(ph, B_OPEN, B_ISO, B_ISO2) & digit  # isotopes of up to three digits
    e_sym1 = b_open & (upper | lower) & jnp.asarray(t["first_ok"])[letter]
    e_star = b_open & (c == ord("*"))
    pair = jnp.asarray(t["pair_z"])[jnp.clip(s.aux, 0, LETTERS - 1), jnp.clip(c - ord("a"), 0, 25)]
    e_sym2 = (ph == B_SYM1) & lower & (pair >= 0)
    sym_done = (ph == B_SYM) | ((ph == B_SYM1) & (s.b_z >= 0) & ~e_sym2)
    e_chir1 = sym_done & (c == ord("@"))
    e_chir2 = (ph == B_CHIR1) & (c == ord("@"))
    h_ok = sym_done | _is(ph, B_CHIR1, B_CHIR2)
    e_h = h_ok & (c == ord("H"))
    e_hd = (ph == B_H) & digit
    chg_ok = h_ok | _is(ph, B_H, B_HD)
    sign = jnp.where(c == ord("+"), 1, jnp.where(c == ord("-"), -1, 0))
    e_sign = chg_ok & (sign != 0)
    e_sign2 = (ph == B_CHG) & (sign == s.b_chg)
    e_chgd = (ph == B_CHG) & digit & (d > 0)
    cls_ok = chg_ok | _is(ph, B_CHG, B_CHG2, B_CHGD)
    e_cls = cls_ok & (c == ord(":"))
    e_clsd = (ph == B_CLS) & digit & (d > 0)
    e_clsd2 = (ph == B_CLSD) & digit  # atom classes of up to two digits
    e_rbr = (cls_ok | _is(ph, B_CLSD, B_CLSD2)) & (c == ord("]"))

    return dict(
        b_open=b_open,
        e_iso=e_iso,
        e_sym1=e_sym1,
        e_star=e_star,
        pair=pair,
        e_sym2=e_sym2,
        sym_done=sym_done,
        e_chir1=e_chir1,
        e_chir2=e_chir2,
        h_ok=h_ok,
        e_h=e_h,
        e_hd=e_hd,
        chg_ok=chg_ok,
        sign=sign,
        e_sign=e_sign,
        e_sign2=e_sign2,
        e_chgd=e_chgd,
        cls_ok=cls_ok,
        e_cls=e_cls,
        e_clsd=e_clsd,
        e_clsd2=e_clsd2,
        e_rbr=e_rbr,
    )


_BRACKET_MOVES = "e_iso e_sym1 e_star e_sym2 e_chir1 e_chir2 e_h e_hd e_sign e_sign2 e_chgd".split()
_BRACKET_MOVES += ["e_cls", "e_clsd", "e_clsd2"]  # the events inside brackets besides ']'


def _pct_dead(s: GrammarState, e_pct, e_pct1, d):
    """'%' and '%n' only where some label they lead to can still be opened or closed here."""
    o, labels = s.opener, jnp.arange(s.opener.shape[0])
    usable = (o < 0) | ((o != s.cur_id) & (o != s.cur_par) & ~jnp.any(o[:, None] == s.partners, 1))
    usable &= labels >= 10
    return (e_pct & ~jnp.any(usable)) | (e_pct1 & ~jnp.any(usable & (labels // 10 == d)))


def char_step(s: GrammarState, ch) -> GrammarState:
    """The state after reading ASCII character `ch` (0 = no-op)."""
    t = element_tables()
    c = jnp.clip(jnp.asarray(ch, jnp.int32), 0, 127)
    ph = s.ph
    digit = (c >= ord("0")) & (c <= ord("9"))
    d = c - ord("0")
    upper = (c >= ord("A")) & (c <= ord("Z"))
    letter = jnp.clip(jnp.where(upper, c - ord("A"), 26 + c - ord("a")), 0, LETTERS - 1)
    order = jnp.asarray(t["bond_order"])[c]
    org_z = jnp.asarray(t["organic_z"])[c]

    atomph = _is(ph, ATOM, ATOM_B, ATOM_C)
    bondph = _is(ph, BOND, BOND_BS)
    can_atom = atomph | bondph | _is(ph, OPEN, OPEN_BOND, OPEN_BOND_BS, START, START_SP, DOT)
    anchor = can_atom & ~_is(ph, START, START_SP, DOT)
    e_ext_b = (ph == ATOM_B) & (c == ord("r"))
    e_ext_c = (ph == ATOM_C) & (c == ord("l"))
    e_org = can_atom & (org_z >= 0) & ~e_ext_b & ~e_ext_c
    e_lbr = can_atom & (c == ord("["))
    e_bond = atomph & (order > 0)
    e_obond = (ph == OPEN) & (order > 0)
    e_bs2 = _is(ph, BOND_BS, OPEN_BOND_BS) & (c == ord("\\"))
    e_digit = (atomph | bondph) & digit
    e_pct = (atomph | bondph) & (c == ord("%"))
    e_pct1 = (ph == PCT) & digit & (d > 0)
    e_pct2 = (ph == PCT1) & digit
    e_push = atomph & (c == ord("("))
    e_pop = atomph & (c == ord(")")) & (s.depth > 0)
    e_dot = atomph & (c == ord("."))
    e_space = (ph == START) & (c == ord(" "))

    ev = _bracket_events(s, c, t)
    e_iso, e_sym1, e_star, e_sym2 = ev["e_iso"], ev["e_sym1"], ev["e_star"], ev["e_sym2"]
    e_chir1, e_chir2, e_h, e_hd = ev["e_chir1"], ev["e_chir2"], ev["e_h"], ev["e_hd"]
    e_sign, e_sign2, e_chgd, e_cls = ev["e_sign"], ev["e_sign2"], ev["e_chgd"], ev["e_cls"]
    e_clsd, e_clsd2, e_rbr = ev["e_clsd"], ev["e_clsd2"], ev["e_rbr"]

    # A new atom (organic, or a bracket atom at its ']') bonds to the current one.
    e_atom = e_org | e_rbr
    has_anchor = jnp.where(e_rbr, s.b_anchor > 0, anchor)
    b = jnp.where(has_anchor, jnp.where(s.pb > 0, s.pb, 1), 0)
    bracket_max = _bracket_valence(t, s.b_z, s.b_chg, s.b_h)
    new_max = jnp.where(e_rbr, bracket_max, jnp.asarray(t["max_valence"])[jnp.clip(org_z, 0, 118)])
    # An organic atom must fit its bond; a bracket atom's bond is checked on the anchor side at
    # '[' (the mask's classes cannot see the element inside the brackets, so ']' never fails: a
    # bracket atom too small for its bond keeps that bond as its valence).
    atom_vfail = e_org & ((anchor & (s.cur_max - s.cur_used < b)) | (new_max < b))
    lbr_vfail = e_lbr & anchor & (s.cur_max - s.cur_used < jnp.where(s.pb > 0, s.pb, 1))
    # A bond symbol, '(' or '%' needs room on the current atom already (else a dead end).
    room = s.cur_max - s.cur_used
    lbr_vfail |= ((e_bond | e_obond) & (room < order)) | ((e_push | e_pct) & (room < 1))
    new_max = jnp.where(e_rbr, jnp.maximum(new_max, b), new_max)

    e_ring = e_digit | e_pct2
    label = jnp.where(e_pct2, 10 * s.pct + d, d)
    opener, opener_par, ring_partners, ring_b, dup, ring_vfail = _ring(s, label, e_ring)
    ring_used = s.cur_used + ring_b
    st_used = _sync_top(s, jnp.where(e_atom, b, 0) + ring_b)

    ext_max = jnp.where(e_ext_b, t["max_valence"][35], t["max_valence"][17])
    ext_vfail = (e_ext_b | e_ext_c) & (s.cur_used > ext_max)

    ok = e_ext_b | e_ext_c | e_atom | e_lbr | e_bond | e_obond | e_bs2 | e_ring | e_pct | e_pct1
    in_bracket = jnp.any(jnp.stack([ev[k] for k in _BRACKET_MOVES]), axis=0)
    ok |= e_push | e_pop | e_dot | e_space | in_bracket | (c == 0)
    depth_cap = s.st_id.shape[0]
    pct_dead = _pct_dead(s, e_pct, e_pct1, d)
    bad = (s.bad > 0) | ~ok | dup | (e_push & (s.depth >= depth_cap)) | pct_dead
    vfail = atom_vfail | lbr_vfail | ring_vfail | ext_vfail
    vbad = s.vbad + vfail.astype(jnp.int32)

    next_ph = jnp.select(
        [e_ext_b | e_ext_c | e_ring | e_pop | e_rbr, e_org, e_lbr, e_bond, e_obond, e_bs2, e_pct],
        [
            jnp.full_like(ph, ATOM),
            jnp.where(c == ord("B"), ATOM_B, jnp.where(c == ord("C"), ATOM_C, ATOM)),
            jnp.full_like(ph, B_OPEN),
            jnp.where(c == ord("\\"), BOND_BS, BOND),
            jnp.where(c == ord("\\"), OPEN_BOND_BS, OPEN_BOND),
            jnp.where(ph == BOND_BS, BOND, OPEN_BOND),
            jnp.full_like(ph, PCT),
        ],
        default=ph,
    )
    # an isotope is 0 or starts with 1-9 ('[00Br]' does not parse)
    iso_first = jnp.where(d == 0, B_ISO3, B_ISO)
    iso_next = jnp.where(ph == B_OPEN, iso_first, jnp.where(ph == B_ISO, B_ISO2, B_ISO3))
    next_ph = jnp.select(
        [e_pct1, e_push, e_dot, e_space, e_iso, e_sym1, e_star | e_sym2, e_chir1, e_chir2, e_h],
        [PCT1, OPEN, DOT, START_SP, iso_next, B_SYM1, B_SYM, B_CHIR1, B_CHIR2, B_H],
        default=next_ph,
    )
    next_ph = jnp.select(
        [e_hd, e_sign, e_sign2, e_chgd, e_cls, e_clsd, e_clsd2],
        [B_HD, B_CHG, B_CHG2, B_CHGD, B_CLS, B_CLSD, B_CLSD2],
        default=next_ph,
    ).astype(jnp.int32)

    return _apply(s, {**locals(), **ev})


def _apply(s: GrammarState, v: dict) -> GrammarState:
    """Writes the fields every event of `char_step` changes (v: char_step's local values)."""
    t = element_tables()
    e_atom, e_push, e_pop, e_ring = v["e_atom"], v["e_push"], v["e_pop"], v["e_ring"]
    depth_cap = v["depth_cap"]
    # Push: the current atom goes on the stack. Pop: the branch point comes back.
    push_at = jnp.clip(s.depth, 0, depth_cap - 1)
    pop_at = jnp.clip(s.depth - 1, 0, depth_cap - 1)

    def push(arr, value):
        return arr.at[push_at].set(jnp.where(e_push, value, arr[push_at]))

    st_used = push(v["st_used"], s.cur_used)
    st_id, st_par, st_max = (
        push(s.st_id, s.cur_id),
        push(s.st_par, s.cur_par),
        push(s.st_max, s.cur_max),
    )
    st_partners = push(s.st_partners, s.partners)
    depth = s.depth + e_push.astype(jnp.int32) - e_pop.astype(jnp.int32)

    cur_id = jnp.where(e_atom, s.natoms, jnp.where(e_pop, st_id[pop_at], s.cur_id))
    cur_par = jnp.where(
        e_atom,
        jnp.where(v["has_anchor"], s.cur_id, -1),
        jnp.where(e_pop, st_par[pop_at], s.cur_par),
    )
    cur_used = jnp.where(e_ring, v["ring_used"], s.cur_used)
    cur_used = jnp.where(e_atom, v["b"], jnp.where(e_pop, st_used[pop_at], cur_used))
    cur_max = jnp.where(e_atom, v["new_max"], jnp.where(e_pop, st_max[pop_at], s.cur_max))
    cur_max = jnp.where(v["e_ext_b"] | v["e_ext_c"], v["ext_max"], cur_max)
    partners = jnp.where(e_ring, v["ring_partners"], s.partners)
    partners = jnp.where(e_atom, jnp.full_like(partners, -1), partners)
    partners = jnp.where(e_pop, st_partners[pop_at], partners)

    pb = jnp.where(v["e_bond"] | v["e_obond"], v["order"], s.pb)
    pb = jnp.where(e_atom | e_ring, 0, pb)
    e_lbr, d, sign = v["e_lbr"], v["d"], v["sign"]
    b_z = jnp.where(e_lbr, -1, s.b_z)
    b_z = jnp.where(v["e_sym1"], jnp.asarray(t["single_z"])[v["letter"]], b_z)
    b_z = jnp.where(v["e_star"], 0, jnp.where(v["e_sym2"], v["pair"], b_z))
    b_h = jnp.where(e_lbr, 0, jnp.where(v["e_h"], 1, jnp.where(v["e_hd"], d, s.b_h)))
    b_chg = jnp.where(e_lbr, 0, jnp.where(v["e_sign"], sign, s.b_chg))
    b_chg = jnp.where(v["e_sign2"], 2 * sign, jnp.where(v["e_chgd"], s.b_chg * d, b_chg))
    bad = v["bad"]
    return GrammarState(
        ph=jnp.where(bad, s.ph, v["next_ph"]).astype(jnp.int32),
        bad=bad.astype(jnp.int32),
        vbad=v["vbad"].astype(jnp.int32),
        depth=depth,
        natoms=s.natoms + e_atom.astype(jnp.int32),
        cur_id=cur_id,
        cur_par=cur_par,
        cur_used=cur_used,
        cur_max=cur_max,
        pb=pb,
        pct=jnp.where(v["e_pct1"], d, s.pct),
        aux=jnp.where(v["e_sym1"], v["letter"], s.aux),
        b_anchor=jnp.where(e_lbr, v["anchor"], s.b_anchor > 0).astype(jnp.int32),
        b_z=b_z,
        b_h=b_h,
        b_chg=b_chg,
        partners=partners,
        st_id=st_id,
        st_par=st_par,
        st_used=st_used,
        st_max=st_max,
        st_partners=st_partners,
        opener=v["opener"],
        opener_par=v["opener_par"],
    )


def run_chars(state: GrammarState, chars_L: jax.Array) -> GrammarState:
    """The state after reading a row of characters (0-padded) in order."""

    def body(s, ch):
        return char_step(s, ch), None

    return jax.lax.scan(body, state, jnp.asarray(chars_L, jnp.int32))[0]


def complete(s: GrammarState) -> jax.Array:
    """True where the text so far is a whole SMILES: an atom (or ring digit / ')') last, no open
    branch or ring, no syntax error."""
    last_ok = _is(s.ph, ATOM, ATOM_B, ATOM_C)
    return last_ok & (s.depth == 0) & jnp.all(s.opener < 0, axis=-1) & (s.bad == 0)


def distance(s: GrammarState) -> jax.Array:
    """Tokens that always suffice to complete the SMILES (EOS not counted): per open ring label two
    atoms (the closure may not be on the opener's neighbour) and its digit(s) ('%nn' takes three),
    one per open branch, and what the phase needs."""
    labels = jnp.arange(s.opener.shape[-1])
    is_open = s.opener >= 0
    open_cost = jnp.sum(jnp.where(is_open, jnp.where(labels >= 10, 5, 3), 0), axis=-1)
    # '%' and '%n' are part of closing an open %nn label (its cost counted the three characters)
    # when one can be closed, else they open a new one (two atoms and '%nn' more)
    pct_can_close = jnp.any(is_open & (labels >= 10), axis=-1)
    pct1_can_close = jnp.any(is_open & (labels // 10 == s.pct[..., None]) & (labels >= 10), axis=-1)
    pct_part = jnp.where(s.ph == PCT, jnp.where(pct_can_close, -3, 5), 0)
    pct_part += jnp.where(s.ph == PCT1, jnp.where(pct1_can_close, -3, 5), 0)
    return open_cost + s.depth + jnp.asarray(PHASE_NEEDS)[s.ph] + pct_part


def text_chars(texts: list[str], length: int | None = None) -> np.ndarray:
    """int32 [N, length] ASCII codes, 0-padded (a non-ASCII character becomes '?', a syntax
    error); `length` defaults to the longest text rounded up to a multiple of 64."""
    longest = max((len(t) for t in texts), default=1)
    length = length or -(-longest // 64) * 64
    out = np.zeros((len(texts), length), np.int32)
    for i, text in enumerate(texts):
        out[i, : len(text)] = np.frombuffer(text.encode("ascii", "replace"), np.uint8)
    return out


def accepts(texts: list[str], *, depth: int = 32, labels: int = 100) -> list[tuple[bool, bool]]:
    """(whole SMILES, valence respected) for each string, on the host (tests and diagnostics)."""
    state = initial_state(depth, labels)
    final = _run_rows(state, jnp.asarray(text_chars(texts)))
    done, vbad = np.asarray(complete(final)), np.asarray(final.vbad)
    return [(bool(a), not bool(b)) for a, b in zip(done, vbad, strict=True)]


@jax.jit
def _run_rows(state, chars_NL):
    return jax.vmap(run_chars, in_axes=(None, 0))(state, chars_NL)
