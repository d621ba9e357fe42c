"""Prefix-shared preference rows: prompt once, then chosen, then rejected, in ONE row (issue 8).

The "indexed" batch layout (docs/DESIGN.md) that prefix sharing and packing produce:

  input_ids       int32[Bt, T]   tokens; a row holds one or more groups (packing)
  attention_mask  int32[Bt, T]   1 on real tokens
  positions       int32[Bt, T]   restart at 0 for every group; both responses continue from the
                                 prompt's end (prompt 0..P-1, chosen P.., rejected P..)
  segment_ids     int32[Bt, T]   group number in the row (1, 2, ...; padding 0): the model only lets
                                 a query see keys of its own group
  role_ids        int32[Bt, T]   ROLE_PROMPT (0), ROLE_CHOSEN (1), ROLE_REJECTED (2); the rule
                                 "attend if same role or the key is the shared prompt" is the
                                 mask_BTS built on device by `role_mask_BTS` (so batches stay small)
  label_ids       int32[Bt, L]   response tokens to score (L: a static bucket)
  label_src       int32[Bt, L]   index in the row of the hidden state that predicts the label
                                 (the previous token; the prompt's last token for a response's
                                 first token, which for the rejected response is NOT the previous
                                 index in the row)
  label_role      int32[Bt, L]   ROLE_CHOSEN / ROLE_REJECTED, 0 on label padding
  label_slot      int32[Bt, L]   pair slot of the label within its row (0..Ps-1)
  pair_mask       float32[Bt, Ps] 1 where a row's slot holds a real pair

Pair p = row * Ps + slot. Per-pair sums come out as chosen_logps[Bt*Ps], rejected_logps[Bt*Ps]
(almol_jax.train.chunked_logprobs). This is the only layout training uses. With Ps = 1 a row
holds one pair: prefix-shared (one group: prompt, chosen, rejected) or unshared (two groups:
prompt + chosen, prompt + rejected, the same slot); an SFT example is one group (prompt +
response). almol_jax.data.packing fills rows with several pairs.

`plain_to_indexed(plain_batch)` converts a plain batch (rows 0..B-1 chosen, B..2B-1 rejected,
docs/DESIGN.md; what `plain_batch` builds, and the tests' oracle layout) on the host;
`write_group` writes groups (prompt + responses) into rows. `PairRowIterator` wraps the training
loop's plain BatchIterator (the planner): same plan and resumable state, one indexed row per pair
built from the tokenised examples, prefix-shared or not (data.prefix_sharing, `use_prefix_sharing`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from almol_jax.data.plan_iterator import PlanFollowingIterator
from almol_jax.objectives import PAIR_OBJECTIVES

ROLE_PROMPT, ROLE_CHOSEN, ROLE_REJECTED = 0, 1, 2
INDEXED_KEYS = (
    "input_ids",
    "attention_mask",
    "positions",
    "segment_ids",
    "role_ids",
    "label_ids",
    "label_src",
    "label_role",
    "label_slot",
    "pair_mask",
)
PREFIX_SHARING_MODES = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class Group:
    """One prompt and the responses that continue it: [(role, token ids), ...].

    A preference triplet shared in one row is Group(prompt, ((1, chosen), (2, rejected)), slot);
    without sharing it is two groups (1, chosen) and (2, rejected) with the same slot; an SFT
    example is one group with (1, response).
    """

    prompt: Sequence[int]
    responses: tuple[tuple[int, Sequence[int]], ...]
    slot: int = 0

    @property
    def length(self) -> int:
        return len(self.prompt) + sum(len(r) for _, r in self.responses)

    @property
    def num_labels(self) -> int:
        return sum(len(r) for _, r in self.responses)


def triplet_groups(prompt, chosen, rejected, *, share_prefix: bool = True) -> list[Group]:
    """The groups of one (prompt, chosen, rejected) triplet of token-id lists, slot 0: one
    prefix-shared group, or (share_prefix=False) prompt + chosen and prompt + rejected."""
    if len(prompt) < 1:
        raise ValueError("prompt is empty: the first response token needs one")
    prompt = tuple(prompt)
    if share_prefix:
        return [Group(prompt, ((ROLE_CHOSEN, tuple(chosen)), (ROLE_REJECTED, tuple(rejected))))]
    return [
        Group(prompt, ((ROLE_CHOSEN, tuple(chosen)),)),
        Group(prompt, ((ROLE_REJECTED, tuple(rejected)),)),
    ]


def empty_indexed(rows: int, row_len: int, label_len: int, slots: int, pad_id: int = 0):
    """An all-padding indexed batch (numpy) of the given static sizes."""
    z = lambda *s: np.zeros(s, np.int32)  # noqa: E731
    return {
        "input_ids": np.full((rows, row_len), pad_id, np.int32),
        "attention_mask": z(rows, row_len),
        "positions": z(rows, row_len),
        "segment_ids": z(rows, row_len),
        "role_ids": z(rows, row_len),
        "label_ids": z(rows, label_len),
        "label_src": z(rows, label_len),
        "label_role": z(rows, label_len),
        "label_slot": z(rows, label_len),
        "pair_mask": np.zeros((rows, slots), np.float32),
    }


def write_group(batch, row: int, offset: int, label_offset: int, segment: int, group: Group):
    """Writes `group` into `batch` row `row` at token `offset` and label `label_offset`.

    Returns (new offset, new label offset). Raises ValueError naming the sizes if it does not fit.
    """
    t_max, l_max = batch["input_ids"].shape[1], batch["label_ids"].shape[1]
    if offset + group.length > t_max:
        raise ValueError(
            f"group of {group.length} tokens does not fit row {row} at {offset=}, {t_max=}"
        )
    if label_offset + group.num_labels > l_max:
        raise ValueError(
            f"group of {group.num_labels} labels does not fit row {row} at {label_offset=}, {l_max=}"
        )
    if not 0 <= group.slot < batch["pair_mask"].shape[1]:
        raise ValueError(f"slot {group.slot} outside [0, {batch['pair_mask'].shape[1]})")
    p = len(group.prompt)
    sl = slice(offset, offset + p)
    batch["input_ids"][row, sl] = group.prompt
    batch["positions"][row, sl] = np.arange(p)
    batch["role_ids"][row, sl] = ROLE_PROMPT
    batch["attention_mask"][row, sl] = 1
    batch["segment_ids"][row, sl] = segment
    last_prompt = offset + p - 1
    t, lo = offset + p, label_offset
    for role, ids in group.responses:
        n = len(ids)
        if role not in (ROLE_CHOSEN, ROLE_REJECTED):
            raise ValueError(f"response role {role} must be {ROLE_CHOSEN} or {ROLE_REJECTED}")
        sl = slice(t, t + n)
        batch["input_ids"][row, sl] = ids
        batch["positions"][row, sl] = p + np.arange(n)
        batch["role_ids"][row, sl] = role
        batch["attention_mask"][row, sl] = 1
        batch["segment_ids"][row, sl] = segment
        lsl = slice(lo, lo + n)
        batch["label_ids"][row, lsl] = ids
        # token j of the response is predicted from j-1, its first token from the prompt's end
        batch["label_src"][row, lsl] = np.concatenate([[last_prompt], t + np.arange(n - 1)])[:n]
        batch["label_role"][row, lsl] = role
        batch["label_slot"][row, lsl] = group.slot
        t, lo = t + n, lo + n
    batch["pair_mask"][row, group.slot] = 1.0
    return t, lo


def bucket_up(n: int, buckets: Sequence[int] = (), multiple: int = 64) -> int:
    """The smallest bucket >= n, else n rounded up to a multiple of `multiple`."""
    for b in sorted(buckets):
        if b >= n:
            return int(b)
    return int(-(-n // multiple) * multiple)


def plain_batch(triplets, *, row_len: int | None = None, pad_id: int = 0) -> dict:
    """The plain layout (DESIGN.md) of (prompt, chosen, rejected) id lists, right-padded: rows
    0..B-1 are prompt+chosen, B..2B-1 prompt+rejected; loss_mask on the response tokens."""
    b = len(triplets)
    longest = max(len(p) + max(len(c), len(r)) for p, c, r in triplets)
    t = longest if row_len is None else row_len
    if t < longest:
        raise ValueError(f"{row_len=} is shorter than the longest sequence ({longest} tokens)")
    ids = np.full((2 * b, t), pad_id, np.int32)
    mask = np.zeros((2 * b, t), np.int32)
    loss = np.zeros((2 * b, t), np.float32)
    for i, (p, c, r) in enumerate(triplets):
        for row, resp in ((i, c), (b + i, r)):
            n = len(p) + len(resp)
            ids[row, :n] = list(p) + list(resp)
            mask[row, :n] = 1
            loss[row, len(p) : n] = 1.0
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "loss_mask": loss,
        "positions": positions,
        "pair_mask": np.ones((b,), np.float32),
    }


def plain_to_triplets(plain_batch) -> tuple[list, np.ndarray]:
    """Splits a plain batch (DESIGN.md) into (prompt, chosen, rejected) id lists and its pair_mask.

    A row's prompt is its real tokens before the first loss_mask token; its response is the
    loss_mask tokens. The chosen and rejected rows of a pair must hold the same prompt.
    """
    ids = np.asarray(plain_batch["input_ids"])
    valid = np.asarray(plain_batch["attention_mask"]).astype(bool)
    loss = np.asarray(plain_batch["loss_mask"]) > 0
    if ids.shape[0] % 2:
        raise ValueError(f"plain batch has {ids.shape[0]} rows; expected 2B (chosen then rejected)")
    b = ids.shape[0] // 2
    pair_mask = np.asarray(plain_batch.get("pair_mask", np.ones((b,), np.float32)), np.float32)

    def split(r):
        resp_idx = np.flatnonzero(loss[r])
        first = resp_idx[0] if resp_idx.size else ids.shape[1]
        prompt = ids[r, :first][valid[r, :first]]
        if resp_idx.size and not np.all(valid[r, resp_idx]):
            raise ValueError(f"row {r}: loss_mask marks padding tokens")
        return prompt.tolist(), ids[r, resp_idx].tolist()

    triplets = []
    for i in range(b):
        p_c, chosen = split(i)
        p_r, rejected = split(b + i)
        if pair_mask[i] > 0 and p_c != p_r:
            raise ValueError(f"pair {i}: chosen and rejected rows hold different prompts")
        if pair_mask[i] > 0 and not p_c:
            raise ValueError(f"pair {i}: empty prompt (a response token needs a predecessor)")
        triplets.append((p_c or [0], chosen, rejected))
    return triplets, pair_mask


def plain_to_indexed(
    plain_batch, *, share_prefix: bool = True, row_buckets=(), label_buckets=(), pad_id: int = 0
):
    """Plain batch -> indexed batch (numpy), one row per pair, static buckets.

    A pair's row holds its prefix-shared group, or with share_prefix=False its two groups (prompt +
    chosen, prompt + rejected). Row length = smallest of `row_buckets` >= the longest row (else
    rounded up to 64); label length likewise for chosen+rejected. Padding pairs keep pair_mask 0
    and no labels.
    """
    triplets, pair_mask = plain_to_triplets(plain_batch)
    groups = [
        triplet_groups(p, c, r, share_prefix=share_prefix) if m > 0 else None
        for (p, c, r), m in zip(triplets, pair_mask, strict=True)
    ]
    real = [gs for gs in groups if gs is not None]
    longest = max((sum(g.length for g in gs) for gs in real), default=1)
    most_labels = max((sum(g.num_labels for g in gs) for gs in real), default=1)
    t_len, l_len = bucket_up(longest, row_buckets), bucket_up(most_labels, label_buckets)
    batch = empty_indexed(len(triplets), t_len, l_len, 1, pad_id)
    for row, gs in enumerate(groups):
        offset = label_offset = 0
        for segment, group in enumerate(gs or (), start=1):
            offset, label_offset = write_group(batch, row, offset, label_offset, segment, group)
    return batch


def use_prefix_sharing(mode: str, objective: str) -> bool:
    """Resolves data.prefix_sharing: on/off, or auto = on for objectives that score pairs."""
    if mode not in PREFIX_SHARING_MODES:
        raise ValueError(f"data.prefix_sharing={mode!r} must be one of {PREFIX_SHARING_MODES}")
    if mode == "auto":
        return objective in PAIR_OBJECTIVES
    return mode == "on"


def role_mask_BTS(role_ids_BT):
    """Device-side mask: a query sees a key of its own role or of the shared prompt (jnp bool)."""

    role_q_BT1 = role_ids_BT[:, :, None]
    role_k_B1S = role_ids_BT[:, None, :]
    return (role_k_B1S == ROLE_PROMPT) | (role_k_B1S == role_q_BT1)


# ---- the training loop's source of indexed rows, one pair per row -----------------------------
def example_groups(example, *, share_prefix: bool = True) -> list[Group]:
    """The groups of one tokenised example (almol_jax.data.tokenize.TokenizedExample), slot 0.

    A triplet whose chosen and rejected rows hold the same prompt ids is one prefix-shared group
    (share_prefix) or two groups (prompt + chosen, prompt + rejected); if the tokeniser merged a
    prompt's last token with a response differently (the prompts differ) it is always two groups;
    a pair (SFT) is one group.
    """
    chosen, rejected = example.chosen, example.rejected
    if rejected is None:
        return [Group(tuple(chosen.prompt_ids), ((ROLE_CHOSEN, tuple(chosen.response_ids)),))]
    if tuple(chosen.prompt_ids) == tuple(rejected.prompt_ids):
        return triplet_groups(
            chosen.prompt_ids,
            chosen.response_ids,
            rejected.response_ids,
            share_prefix=share_prefix,
        )
    return [
        Group(tuple(chosen.prompt_ids), ((ROLE_CHOSEN, tuple(chosen.response_ids)),)),
        Group(tuple(rejected.prompt_ids), ((ROLE_REJECTED, tuple(rejected.response_ids)),)),
    ]


def indexed_from_examples(
    groups_per_pair, *, row_len: int, label_len: int, bos_id: int, pad_id: int
) -> dict[str, np.ndarray]:
    """One row per pair (a list of groups, or None for a padding pair) in the indexed layout.

    A padding pair's row is BOS then padding (one valid key, no labels, pair_mask 0), like the
    plain layout's padding rows.
    """
    batch = empty_indexed(len(groups_per_pair), row_len, label_len, 1, pad_id)
    for row, groups in enumerate(groups_per_pair):
        if groups is None:
            batch["input_ids"][row, 0] = bos_id
            batch["attention_mask"][row, 0] = 1
            batch["segment_ids"][row, 0] = 1
            continue
        offset = label_offset = 0
        for segment, group in enumerate(groups, start=1):
            offset, label_offset = write_group(batch, row, offset, label_offset, segment, group)
    return batch


class PairRowIterator(PlanFollowingIterator):
    """Wraps a plain `almol_jax.data.batching.BatchIterator`: same plan, same pairs, same
    state()/restore(), but each batch comes in the indexed layout, one row per pair (its groups:
    `example_groups(example, share_prefix=...)`).

    Shapes are static per batch and equal on every host: the row length is the smallest of
    `row_buckets` (the plain bucket lengths) holding the GLOBAL batch's longest row, else that
    length rounded up to `multiple`; the label length likewise (multiples of `multiple`). Every
    host computes them from the whole plan, then builds only its own rows (its contiguous block
    of pairs), so the global batch is the hosts' rows concatenated in process order.
    """

    def __init__(self, inner, *, share_prefix: bool = True, row_buckets=(), multiple: int = 64):
        if multiple < 1:
            raise ValueError(f"{multiple=} must be positive")
        super().__init__(inner)
        self.row_buckets = tuple(row_buckets)
        self.multiple = int(multiple)
        self._groups = [example_groups(ex, share_prefix=share_prefix) for ex in inner.examples]

    def sizes(self, indices) -> tuple[int, int]:
        """(row_len, label_len) of the global batch `indices` (PAD_INDEX = -1 for padding)."""
        real = [self._groups[int(i)] for i in indices if i >= 0]
        longest = max((sum(g.length for g in gs) for gs in real), default=1)
        labels = max((sum(g.num_labels for g in gs) for gs in real), default=1)
        return (
            bucket_up(longest, self.row_buckets, self.multiple),
            bucket_up(max(labels, 1), (), self.multiple),
        )

    def batch(self, epoch: int, position: int) -> dict[str, np.ndarray]:
        """This host's rows of batch `position` of epoch `epoch`."""
        _, indices = self.inner.plan(epoch)[position]
        row_len, label_len = self.sizes(indices)
        start, stop = self.inner.pair_range
        return indexed_from_examples(
            [self._groups[int(i)] if i >= 0 else None for i in indices[start:stop]],
            row_len=row_len,
            label_len=label_len,
            bos_id=self.inner.bos_id,
            pad_id=self.inner.pad_id,
        )
