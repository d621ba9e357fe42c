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

`PackedIterator` wraps the training loop's plain BatchIterator (data.packing on): the same plan,
pairs and resumable state, each step's global batch packed into rows (see its docstring).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from almol_jax.data.plan_iterator import PlanFollowingIterator
from almol_jax.data.prefix_sharing import (
    ROLE_CHOSEN,
    Group,
    bucket_up,
    empty_indexed,
    example_groups,
    triplet_groups,
    write_group,
)


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


def write_rows(batch, plan: Sequence[Sequence[int]], examples) -> dict[int, tuple[int, int]]:
    """Writes the examples of planned row r into `batch` row r (r = 0, 1, ...).

    Each example takes the pair slot of its position in its row and one segment per group.
    Returns {example index: (row, slot)} for every example of the plan.
    """
    where = {}
    for row, members in enumerate(plan):
        offset = label_offset = 0
        segment = 1
        for slot, i in enumerate(members):
            for g in examples[i]:
                g = Group(g.prompt, g.responses, slot)
                offset, label_offset = write_group(batch, row, offset, label_offset, segment, g)
                segment += 1
            where[i] = (row, slot)
    return where


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
    placed = write_rows(batch, plan, examples)
    return batch, [placed[i] for i in range(len(examples))]


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
    examples = [triplet_groups(p, c, r, share_prefix=share_prefix) for p, c, r in triplets]
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


class PackedIterator(PlanFollowingIterator):
    """Wraps a plain `almol_jax.data.batching.BatchIterator` (data.packing on): the same plan,
    pairs and state()/restore(), each step's GLOBAL batch of pairs packed into indexed rows.

    Every host plans the whole global batch (first-fit decreasing, `plan_rows`), so shapes are
    static per step and equal on every host, then writes only its own contiguous block of rows.
    Rows: the planned count rounded up to a multiple of `row_multiple` (the loop passes grad_accum
    x lcm(batch shards, processes): the rows split evenly into micro-batches, devices and hosts;
    extra rows are padding, pair_mask 0).
    Row length `row_len`; label length: the most labels a planned row holds, rounded up to
    `multiple`. With `responses="chosen"` (SFT) only the chosen responses are written.
    """

    def __init__(
        self,
        inner,
        *,
        row_len: int,
        max_slots: int,
        row_multiple: int = 1,
        multiple: int = 64,
        responses: str = "both",
        process_index: int = 0,
        process_count: int = 1,
    ):
        if row_multiple < 1 or multiple < 1 or max_slots < 1:
            raise ValueError(f"{row_multiple=}, {multiple=} and {max_slots=} must be positive")
        if responses not in ("both", "chosen"):
            raise ValueError(f"responses={responses!r} must be 'both' or 'chosen'")
        if row_multiple % process_count:
            raise ValueError(f"{row_multiple=} must be a multiple of {process_count=}")
        super().__init__(inner)
        self.row_len, self.max_slots = int(row_len), int(max_slots)
        self.row_multiple, self.multiple = int(row_multiple), int(multiple)
        self.process_index, self.process_count = process_index, process_count
        self._groups = [_example_groups(ex, responses) for ex in inner.examples]
        too_long = [
            i for i, gs in enumerate(self._groups) if sum(g.length for g in gs) > self.row_len
        ]
        if too_long:
            i = too_long[0]
            raise ValueError(
                f"{len(too_long)} examples do not fit data.pack_length={self.row_len} tokens "
                f"(example {i} needs {sum(g.length for g in self._groups[i])}); raise it"
            )

    def plan(self, indices) -> tuple[list[list[int]], int, int]:
        """(rows as lists of example indices, row count, label length) of a global batch."""
        real = [int(i) for i in indices if i >= 0]
        examples = [self._groups[i] for i in real]
        rows = plan_rows(
            examples, row_len=self.row_len, label_len=self.row_len, max_slots=self.max_slots
        )
        labels = max(
            (sum(g.num_labels for i in row for g in examples[i]) for row in rows), default=1
        )
        n_rows = max(1, math.ceil(len(rows) / self.row_multiple)) * self.row_multiple
        return (
            [[real[i] for i in row] for row in rows],
            n_rows,
            bucket_up(max(labels, 1), (), self.multiple),
        )

    def batch(self, epoch: int, position: int) -> dict[str, np.ndarray]:
        """This host's rows of batch `position` of epoch `epoch`."""
        _, indices = self.inner.plan(epoch)[position]
        rows, n_rows, label_len = self.plan(indices)
        per_host = n_rows // self.process_count
        first = self.process_index * per_host
        mine = rows[first : first + per_host]
        batch = empty_indexed(per_host, self.row_len, label_len, self.max_slots, self.inner.pad_id)
        write_rows(batch, mine, self._groups)
        for r in range(len(mine), per_host):  # padding rows: BOS, one valid key, no labels
            batch["input_ids"][r, 0] = self.inner.bos_id
            batch["attention_mask"][r, 0] = 1
            batch["segment_ids"][r, 0] = 1
        return batch

    def efficiency(self, epoch: int = 0) -> float:
        """Share of packed row tokens that are real tokens, over one epoch's plan."""
        used = total = 0
        for _, indices in self.inner.plan(epoch):
            rows, n_rows, _ = self.plan(indices)
            used += sum(g.length for row in rows for i in row for g in self._groups[i])
            total += n_rows * self.row_len
        return used / max(total, 1)


def _example_groups(example, responses: str) -> list[Group]:
    groups = example_groups(example)
    if responses == "both":
        return groups
    prompt_groups = []
    for g in groups:
        kept = tuple((role, ids) for role, ids in g.responses if role == ROLE_CHOSEN)
        if kept:
            prompt_groups.append(Group(g.prompt, kept, g.slot))
    return prompt_groups
