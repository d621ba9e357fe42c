"""Packing several short examples per row (issue 8), for CPO and SFT, into the indexed layout.

Each example becomes one or more groups (almol_jax.data.prefix_sharing.Group): a prefix-shared
triplet is one group (prompt, chosen, rejected); an unshared triplet is two groups (prompt +
chosen, prompt + rejected) with the same pair slot; an SFT example is one group (prompt +
response, role "chosen"). Groups are placed first-fit in order of decreasing length into rows of
`row_len` tokens and `label_len` labels, with at most `max_slots` pairs per row. Every group gets
its own segment id (the model only lets a query see keys of its own segment) and positions that
restart at 0, so a packed row computes exactly what separate rows would.

    batch, where = pack_triplets(triplets, row_len=512, label_len=256, max_slots=4, rows=8)
    # where[i] = (row, slot) of triplet i; pair p = row * max_slots + slot of logps_sum

The number of rows is static when `rows` is given (padding rows have pair_mask 0); a ValueError
names the sizes when the examples do not fit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from almol_jax.data.prefix_sharing import (
    ROLE_CHOSEN,
    ROLE_REJECTED,
    Group,
    empty_indexed,
    triplet_group,
    write_group,
)


def _groups_of_triplet(prompt, chosen, rejected, share_prefix: bool) -> list[Group]:
    if share_prefix:
        return [triplet_group(prompt, chosen, rejected)]
    return [
        Group(tuple(prompt), ((ROLE_CHOSEN, tuple(chosen)),)),
        Group(tuple(prompt), ((ROLE_REJECTED, tuple(rejected)),)),
    ]


def plan_rows(
    examples: Sequence[list[Group]], *, row_len: int, label_len: int, max_slots: int
) -> list[list[int]]:
    """First-fit-decreasing: the example indices held by each row (an example never splits)."""
    if row_len < 1 or label_len < 1 or max_slots < 1:
        raise ValueError(f"{row_len=}, {label_len=} and {max_slots=} must be positive")
    size = [(sum(g.length for g in ex), sum(g.num_labels for g in ex)) for ex in examples]
    for i, (t, lab) in enumerate(size):
        if t > row_len or lab > label_len:
            raise ValueError(
                f"example {i} needs {t} tokens and {lab} labels; rows hold {row_len=}, {label_len=}"
            )
    rows: list[list[int]] = []
    used: list[list[int]] = []  # [tokens, labels] per row
    for i in sorted(range(len(examples)), key=lambda i: -size[i][0]):
        t, lab = size[i]
        for r, (ut, ul) in enumerate(used):
            if len(rows[r]) < max_slots and ut + t <= row_len and ul + lab <= label_len:
                rows[r].append(i)
                used[r] = [ut + t, ul + lab]
                break
        else:
            rows.append([i])
            used.append([t, lab])
    return rows


def pack_examples(
    examples: Sequence[list[Group]],
    *,
    row_len: int,
    label_len: int,
    max_slots: int,
    rows: int | None = None,
    pad_id: int = 0,
):
    """Packs examples (each a list of groups sharing one pair slot) -> (indexed batch, where)."""
    plan = plan_rows(examples, row_len=row_len, label_len=label_len, max_slots=max_slots)
    n_rows = len(plan) if rows is None else rows
    if len(plan) > n_rows:
        raise ValueError(f"{len(examples)} examples need {len(plan)} rows; only {rows=} allowed")
    batch = empty_indexed(n_rows, row_len, label_len, max_slots, pad_id)
    where = [(-1, -1)] * len(examples)
    for r, members in enumerate(plan):
        offset = label_offset = 0
        segment = 1
        for slot, i in enumerate(members):
            for g in examples[i]:
                g = Group(g.prompt, g.responses, slot)
                offset, label_offset = write_group(batch, r, offset, label_offset, segment, g)
                segment += 1
            where[i] = (r, slot)
    return batch, where


def pack_triplets(
    triplets: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]],
    *,
    row_len: int,
    label_len: int,
    max_slots: int,
    rows: int | None = None,
    share_prefix: bool = True,
    pad_id: int = 0,
):
    """Packs (prompt, chosen, rejected) id lists; see the module docstring."""
    examples = [_groups_of_triplet(p, c, r, share_prefix) for p, c, r in triplets]
    return pack_examples(
        examples,
        row_len=row_len,
        label_len=label_len,
        max_slots=max_slots,
        rows=rows,
        pad_id=pad_id,
    )


def pack_sft(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    row_len: int,
    label_len: int,
    max_slots: int,
    rows: int | None = None,
    pad_id: int = 0,
):
    """Packs (prompt, response) id lists for SFT: each response is scored as a "chosen" one."""
    examples = [[Group(tuple(p), ((ROLE_CHOSEN, tuple(r)),))] for p, r in pairs]
    return pack_examples(
        examples,
        row_len=row_len,
        label_len=label_len,
        max_slots=max_slots,
        rows=rows,
        pad_id=pad_id,
    )


def packing_efficiency(batch) -> float:
    """Share of the row tokens that are real (attention_mask) tokens."""
    mask = np.asarray(batch["attention_mask"])
    return float(mask.sum() / mask.size)
