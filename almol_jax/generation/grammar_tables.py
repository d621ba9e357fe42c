"""The SMILES grammar over a tokenizer's vocabulary: tables built once, then a mask and an update per
decode step, on device.

`build_tables(tokenizer, vocab_size, eos_ids)` reads the text every token adds (SentencePiece
pieces with their '▁' and <0xNN> byte pieces, or byte-level BPE pieces), keeps the tokens whose
text can occur in a SMILES (the candidates), and precomputes, for every compact state class
(phase, first bracket letter or charge sign, pending bond order, remaining valence of the atom a
new bond would attach to, clipped to 7) and every candidate, whether the automaton
(smiles_grammar.py) accepts the token's characters from that class. Tokens whose effect depends on
what the class lacks (ring digits and '%': the open labels; ')': the branch point's valence;
characters after ']': the bracket atom's valence) are run through the automaton for every row
instead (a few dozen in a SentencePiece vocabulary with split digits). Inside a bracket atom the
class does not know the element, so a token ending in ']' may give an atom fewer bonds than it
already has (recorded in `vbad`, never a syntax error).

`allowed_mask(tables, state_B)` -> bool [B, V]: a table row per row, the depth checks, the ring
tokens' runs, and EOS only where the SMILES is complete (or where nothing else is allowed).
`advance(tables, state_B, token_B)` -> the state after each row's token (its characters run
through the automaton). Both are jnp functions for the jitted decode loops.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from almol_jax.generation import smiles_grammar as g
from almol_jax.generation.smiles_elements import LETTERS, UNCONSTRAINED, element_tables

MAX_DEPTH = 32  # branch depth the decoder supports (ChEBI-20 test SMILES reach 28)
RING_LABELS = 100  # 0-9 and %10-%99
REM_CLASSES = 8  # remaining valence 0..6, 7 = 7 or more / unconstrained
PENDING_BONDS = 5  # pending bond order 0..4
REJECTED = -(1 << 20)  # `_accept_grid` of a token the automaton rejects
# Exact runs of texts up to this long are unrolled character steps, longer ones a scan (on the
# demo's tokenizer, CPU: the mask takes 0.45 of the all-scan time unrolling 2, 0.63 unrolling 4).
UNROLLED_CHARS = 2
_TABLE_DEPTH = 8  # the representative states' branch depth (their stack holds 16)
SMILES_CHARS = frozenset("ABCDEFGHIKLMNOPRSTUVWXYZabcdefghiklmnoprstuyz0123456789()[]=#$:/\\%+-.@*")


class GrammarTables(NamedTuple):
    """Device arrays of one vocabulary (a pytree, a traced argument of the decode programs)."""

    chars_VL: jax.Array  # int32: every token's characters (0 = none; non-candidates are all 0)
    lengths_V: jax.Array  # int32: characters per token (0 for non-candidates)
    cand_ids: jax.Array  # int32 [C]: candidates the table answers for
    table_SC: jax.Array  # bool [S, C]: accepted from each state class
    delta_SC: jax.Array  # int32 [S, C]: change of the completion distance (g.distance)
    need_pop_C: jax.Array  # int32 [C]: ')' beyond the token's own '(' (branch depth needed)
    max_push_C: jax.Array  # int32 [C]: deepest '(' nesting the token reaches
    ring_ids: jax.Array  # int32 [Rt]: candidates run exactly (a digit, '%' or ')')
    ring_pos: jax.Array  # int32 [Rt]: each one's distinct text, in the groups' order
    ring_groups: tuple[jax.Array, ...]  # int32 [U_g, L_g]: distinct texts with a digit or '%'
    lite_groups: tuple[jax.Array, ...]  # int32 [U_g, L_g]: the others (run without ring labels)
    eos_ids: jax.Array  # int32 [E]


def token_texts(tokenizer: Any, vocab_size: int) -> list[str | None]:
    """The text each id adds to a decoded string (None: special, unknown or not ASCII)."""
    n = len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    special = set(getattr(tokenizer, "all_special_ids", []))
    byte_level = _is_byte_level(tokenizer)
    decode_byte = {c: b for b, c in _gpt2_bytes().items()} if byte_level else {}
    out: list[str | None] = []
    for i in range(vocab_size):
        piece = pieces[i] if i < n else None
        if piece is None or i in special:
            out.append(None)
            continue
        if byte_level:
            raw = bytes(decode_byte.get(c, 0x80) for c in piece)
        elif piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            raw = bytes([int(piece[3:5], 16)])
        else:
            raw = piece.replace("\u2581", " ").encode("utf-8")
        out.append(raw.decode("ascii") if raw.isascii() and raw else None)
    return out


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.decoder is None:
        return False
    return '"ByteLevel"' in json.dumps(json.loads(backend.to_str()).get("decoder"))


def _gpt2_bytes() -> dict[int, str]:
    from almol_jax.data.tokenizer import _bytes_to_unicode

    return _bytes_to_unicode()


def is_candidate(text: str | None) -> bool:
    """Whether a token's text can occur in a SMILES (a space only as its first character)."""
    if not text:
        return False
    body = text[1:] if text[0] == " " else text
    return bool(body) and all(c in SMILES_CHARS for c in body) or text == " "


def _run_exactly(text: str) -> bool:
    """Tokens the mask runs per row: ring digits and '%' (open labels), ')' (the branch point's
    valence) and characters after ']' (the bracket atom's valence): facts the classes lack."""
    return any(c.isdigit() or c in "%)" for c in text) or "]" in text[:-1]


def _touches_rings(text: str) -> bool:
    """Whether a token's characters can read or change the ring labels (a digit or '%'); the
    others are run exactly on a state without them (`_lite`)."""
    return any(c.isdigit() or c == "%" for c in text)


def _by_length(texts: list[str]) -> dict[int, list[str]]:
    """Texts grouped by their length rounded up to a power of two (one scan length per group)."""
    groups: dict[int, list[str]] = {}
    for text in texts:
        groups.setdefault(1 << (len(text) - 1).bit_length(), []).append(text)
    return groups


def _depth_needs(text: str) -> tuple[int, int]:
    """(')' beyond the token's own '(', deepest '(' nesting within the token)."""
    level, low, high = 0, 0, 0
    for c in text:
        level += (c == "(") - (c == ")")
        low, high = min(low, level), max(high, level)
    return -low, high


def class_count() -> int:
    return _class_layout()[1] * REM_CLASSES


def _class_layout() -> tuple[np.ndarray, int]:
    """(base index [phase, k, pending bond], number of (phase, k, bond) combinations); k is the
    first bracket letter in B_SYM1, the charge sign in B_CHG, else 0."""
    base = np.full((len(g.PHASES), LETTERS, PENDING_BONDS), -1, np.int32)
    n = 0
    for ph in range(len(g.PHASES)):
        ks = LETTERS if ph == g.B_SYM1 else (2 if ph == g.B_CHG else 1)
        for k in range(ks):
            for pb in range(PENDING_BONDS):
                base[ph, k, pb] = n
                n += 1
    return base, n


def state_class(s: g.GrammarState) -> jax.Array:
    """The compact class of a state (works on a batch of states)."""
    base, _ = _class_layout()
    k = jnp.where(s.ph == g.B_SYM1, s.aux, jnp.where(s.ph == g.B_CHG, (s.b_chg < 0), 0))
    in_bracket = (s.ph >= g.B_OPEN) & (s.ph <= g.B_CLSD2)
    no_anchor = (s.ph == g.START) | (s.ph == g.START_SP) | (s.ph == g.DOT)
    no_anchor = no_anchor | (in_bracket & (s.b_anchor == 0))
    rem = jnp.where(no_anchor, REM_CLASSES - 1, jnp.clip(s.cur_max - s.cur_used, 0, 7))
    pb = jnp.clip(s.pb, 0, PENDING_BONDS - 1)
    return jnp.asarray(base)[s.ph, jnp.clip(k, 0, LETTERS - 1), pb] * REM_CLASSES + rem


def _representatives() -> g.GrammarState:
    """One state per class (stacked on axis 0): the class's fields, an unconstrained rest."""
    base, n = _class_layout()
    t = element_tables()
    cols: dict[str, list[int]] = {f: [] for f in ("ph", "aux", "pb", "b_z", "b_chg")}
    cols.update(cur_max=[], cur_used=[])
    for ph, k, pb in zip(*np.nonzero(base >= 0), strict=True):
        for rem in range(REM_CLASSES):
            limit = UNCONSTRAINED if rem == REM_CLASSES - 1 else rem
            own = {g.ATOM_B: t["max_valence"][5], g.ATOM_C: t["max_valence"][6]}.get(int(ph))
            cols["ph"].append(ph)
            cols["aux"].append(k if ph == g.B_SYM1 else 0)
            cols["pb"].append(pb)
            cols["b_z"].append(t["single_z"][k] if ph == g.B_SYM1 else 0)
            cols["b_chg"].append((1 - 2 * k) if ph == g.B_CHG else 0)
            cols["cur_max"].append(limit if own is None else own)
            cols["cur_used"].append(0 if own is None else max(own - rem, 0))
    rows = len(cols["ph"])
    assert rows == n * REM_CLASSES
    one = g.initial_state(2 * _TABLE_DEPTH, 1)
    fields = {
        name: np.broadcast_to(np.asarray(v), (rows,) + v.shape) for name, v in one._asdict().items()
    }
    fields = {k: np.array(v) for k, v in fields.items()}
    for name, values in cols.items():
        fields[name] = np.asarray(values, np.int32)
    fields["depth"][:] = _TABLE_DEPTH
    fields["st_id"][:] = np.arange(2 * _TABLE_DEPTH) + 1000
    fields["cur_id"][:], fields["cur_par"][:], fields["natoms"][:] = 50, 49, 60
    fields["b_anchor"][:] = np.asarray(cols["cur_max"]) < UNCONSTRAINED  # no anchor: class 7
    return g.GrammarState(**{k: jnp.asarray(v) for k, v in fields.items()})


@jax.jit
def _accept_grid(states: g.GrammarState, chars_CL: jax.Array) -> jax.Array:
    """int32 [S, C]: REJECTED where token c's characters are rejected (syntax or valence) from
    state s, else the change of the completion distance (these tokens keep the ring labels)."""

    def one(s, chars):
        end = g.run_chars(s, chars)
        ok = (end.bad == 0) & (end.vbad == s.vbad)
        return jnp.where(ok, g.distance(end) - g.distance(s), REJECTED)

    return jax.vmap(lambda s: jax.vmap(lambda c: one(s, c))(chars_CL))(states)


def build_tables(
    tokenizer: Any, vocab_size: int, eos_ids: Sequence[int], *, chunk: int = 256
) -> GrammarTables:
    """The grammar tables of a tokenizer for a model with `vocab_size` logits."""
    return tables_from_texts(token_texts(tokenizer, vocab_size), eos_ids, chunk=chunk)


def tables_from_texts(
    texts: Sequence[str | None], eos_ids: Sequence[int], *, chunk: int = 256
) -> GrammarTables:
    """The grammar tables of a vocabulary given as the text of each id (None: never allowed)."""
    cands = [i for i, t in enumerate(texts) if is_candidate(t)]
    if not cands:
        raise ValueError("no token of the vocabulary can occur in a SMILES")
    longest = max(len(texts[i]) for i in cands)
    chars_VL = np.zeros((len(texts), longest), np.int32)
    chars_VL[cands] = g.text_chars([texts[i] for i in cands], longest)
    ring = [i for i in cands if _run_exactly(texts[i])]
    plain = [i for i in cands if i not in set(ring)]
    ring = ring or [cands[0]]  # at least one (an exact run of a token the table has is harmless)
    grid = _accept_table(_representatives(), [texts[i] for i in plain], chunk)
    accepted = grid != REJECTED
    needs = np.asarray([_depth_needs(texts[i]) for i in plain] or np.zeros((0, 2)), np.int32)
    distinct = sorted({texts[i] for i in ring}, key=lambda t: (len(t), t))
    full = _by_length([t for t in distinct if _touches_rings(t)])
    lite = _by_length([t for t in distinct if not _touches_rings(t)])
    order = [t for groups in (full, lite) for length in sorted(groups) for t in groups[length]]
    where = {t: k for k, t in enumerate(order)}
    return GrammarTables(
        chars_VL=jnp.asarray(chars_VL),
        lengths_V=jnp.asarray([len(t) if i in set(cands) else 0 for i, t in enumerate(texts)]),
        cand_ids=jnp.asarray(plain, jnp.int32),
        table_SC=jnp.asarray(accepted),
        delta_SC=jnp.asarray(np.where(accepted, grid, 0), jnp.int32),
        need_pop_C=jnp.asarray(needs[:, 0].reshape(-1), jnp.int32),
        max_push_C=jnp.asarray(needs[:, 1].reshape(-1), jnp.int32),
        ring_ids=jnp.asarray(ring, jnp.int32),
        ring_pos=jnp.asarray([where[texts[i]] for i in ring], jnp.int32),
        ring_groups=tuple(jnp.asarray(g.text_chars(full[n], n)) for n in sorted(full)),
        lite_groups=tuple(jnp.asarray(g.text_chars(lite[n], n)) for n in sorted(lite)),
        eos_ids=jnp.asarray(list(eos_ids), jnp.int32),
    )


def _accept_table(reps: g.GrammarState, texts: list[str], chunk: int) -> np.ndarray:
    """`_accept_grid` for every class; tokens no class accepts with an unconstrained valence are
    skipped first."""
    out = np.full((class_count(), len(texts)), REJECTED, np.int32)
    loose = jax.tree.map(lambda x: x[REM_CLASSES - 1 :: REM_CLASSES], reps)
    alive = np.nonzero((_grid(loose, texts, chunk) != REJECTED).any(axis=0))[0]
    out[:, alive] = _grid(reps, [texts[i] for i in alive], chunk)
    return out


def _grid(states: g.GrammarState, texts: list[str], chunk: int) -> np.ndarray:
    """int32 [states, texts] by `_accept_grid`, in chunks of states of one shape (one compile)."""
    rows = states.ph.shape[0]
    padded = -(-rows // chunk) * chunk
    states = jax.tree.map(
        lambda x: jnp.concatenate([x, jnp.repeat(x[:1], padded - rows, 0)]), states
    )
    chars = jnp.asarray(g.text_chars(texts, max(len(t) for t in texts)))
    parts = [
        np.asarray(_accept_grid(jax.tree.map(lambda x, lo=lo: x[lo : lo + chunk], states), chars))
        for lo in range(0, padded, chunk)
    ]
    return np.concatenate(parts)[:rows]


def initial_states(batch: int) -> g.GrammarState:
    """The start state for `batch` rows."""
    one = g.initial_state(MAX_DEPTH, RING_LABELS)
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (batch,) + x.shape), one)


def allowed_mask(
    tables: GrammarTables, state_B: g.GrammarState, remaining: jax.Array | None = None
) -> jax.Array:
    """bool [B, V]: the tokens each row may take next.

    With `remaining` (tokens left, this one included), a token must also leave room to finish:
    the tokens that suffice to complete after it (g.distance) plus EOS must fit in what is left,
    unless it lowers that distance (so a row running out of length closes its rings and branches
    instead of being cut off); where no token meets this, the budget is ignored. EOS is allowed
    where the SMILES is complete, and where no other token is (a dead row)."""
    batch, vocab = state_B.ph.shape[0], tables.chars_VL.shape[0]
    depth_B1 = state_B.depth[:, None]
    cls_B = state_class(state_B)
    plain_BC = tables.table_SC[cls_B]
    plain_BC &= (tables.need_pop_C[None, :] <= depth_B1) & (
        depth_B1 + tables.max_push_C[None, :] <= MAX_DEPTH
    )
    dist_B1 = g.distance(state_B)[:, None]

    ring_BR, ring_dist_BR = _exact_runs(tables, state_B)
    alive_B1 = (state_B.bad == 0)[:, None]
    plain_BC, ring_BR = plain_BC & alive_B1, ring_BR & alive_B1
    done_B = g.complete(state_B)
    if remaining is not None:  # the length budget binds only where some token still fits it
        plain_dist_BC = dist_B1 + tables.delta_SC[cls_B]
        plain_fits = plain_BC & ((plain_dist_BC + 1 < remaining) | (plain_dist_BC < dist_B1))
        ring_fits = ring_BR & ((ring_dist_BR + 1 < remaining) | (ring_dist_BR < dist_B1))
        binds_B1 = jnp.any(plain_fits, -1, keepdims=True) | jnp.any(ring_fits, -1, keepdims=True)
        binds_B1 |= done_B[:, None]  # EOS fits wherever the SMILES is complete
        plain_BC = jnp.where(binds_B1, plain_fits, plain_BC)
        ring_BR = jnp.where(binds_B1, ring_fits, ring_BR)
    stuck_B = ~(jnp.any(plain_BC, axis=-1) | jnp.any(ring_BR, axis=-1))
    return (
        _scatter(tables, batch, vocab, plain_BC, ring_BR)
        .at[:, tables.eos_ids]
        .set((done_B | stuck_B)[:, None])
    )


def _lite(state_B: g.GrammarState) -> g.GrammarState:
    """The states without their ring labels (one closed label): what a token without a digit or
    '%' needs (it neither reads nor changes them), at a fraction of the work per character."""
    closed = jnp.full((state_B.opener.shape[0], 1), -1, jnp.int32)
    return state_B._replace(opener=closed, opener_par=closed)


def _exact_runs(tables: GrammarTables, state_B: g.GrammarState) -> tuple[jax.Array, jax.Array]:
    """(accepted [B, Rt], completion distance after [B, Rt]) of the tokens run exactly: each
    distinct text once, grouped by length (a one-character token is a one-step run); texts
    without a digit or '%' run on `_lite` states, their distance offset by the ring labels'."""
    batch = state_B.ph.shape[0]

    def ring_run(s, chars):
        if chars.shape[0] > UNROLLED_CHARS:
            end = g.run_chars(s, chars)
        else:  # plain steps: XLA drops the fields the answer does not read (a scan keeps all)
            end = s
            for i in range(chars.shape[0]):
                end = g.char_step(end, chars[i])
        return (end.bad == 0) & (end.vbad == s.vbad), g.distance(end)

    def run_groups(states, groups):
        return [
            jax.vmap(lambda s, chars=chars: jax.vmap(lambda c: ring_run(s, c))(chars))(states)
            for chars in groups
        ]

    lite_B = _lite(state_B)
    offset_B1 = (g.distance(state_B) - g.distance(lite_B))[:, None]
    lite = [(ok, dist + offset_B1) for ok, dist in run_groups(lite_B, tables.lite_groups)]
    runs = run_groups(state_B, tables.ring_groups) + lite
    ring_BR = jnp.concatenate([r[0] for r in runs] or [jnp.zeros((batch, 0), bool)], axis=1)
    ring_dist_BR = jnp.concatenate(
        [r[1] for r in runs] or [jnp.zeros((batch, 0), jnp.int32)], axis=1
    )
    return ring_BR[:, tables.ring_pos], ring_dist_BR[:, tables.ring_pos]


def _scatter(tables: GrammarTables, batch: int, vocab: int, plain_BC, ring_BR) -> jax.Array:
    mask = jnp.zeros((batch, vocab), bool)
    return mask.at[:, tables.cand_ids].set(plain_BC).at[:, tables.ring_ids].set(ring_BR)


def advance(tables: GrammarTables, state_B: g.GrammarState, token_B: jax.Array) -> g.GrammarState:
    """Each row's state after its token (EOS, pad and other non-candidates change nothing);
    loops only over as many characters as the longest of the chosen tokens has."""
    chars_BL = tables.chars_VL[token_B]
    steps = jnp.max(tables.lengths_V[token_B])

    def body(carry):
        i, state = carry
        return i + 1, jax.vmap(g.char_step)(state, chars_BL[:, i])

    return jax.lax.while_loop(lambda c: c[0] < steps, body, (jnp.int32(0), state_B))[1]


def mask_logits(
    tables: GrammarTables, state_B: g.GrammarState, logits_BV, remaining=None, fill=-jnp.inf
):
    """Logits with the forbidden tokens set to `fill` (`remaining`: as in allowed_mask)."""
    return jnp.where(allowed_mask(tables, state_B, remaining), logits_BV, fill)
