"""Static-shape batches from length buckets, a seeded resumable iterator, and per-host row splits.

One optimizer step consumes a GLOBAL batch of G = micro_batch_size * grad_accum pairs, all padded
to one bucket length T (the smallest of data.buckets + [max_length] holding every row), so the
jitted step compiles once per bucket, never per batch. Host-local arrays (numpy):

  input_ids      int32   [A, R_h, T]   A = grad_accum, R = 2 * micro_batch_size global rows
  attention_mask int32   [A, R_h, T]   1 on prompt + response tokens, 0 on right padding
  loss_mask      float32 [A, R_h, T]   1 where token t is a response token (incl. EOS) predicted
                                       from t-1 (TRL labels != -100); prompt/padding 0
  positions      int32   [A, R_h, T]   cumsum(attention_mask) - 1, clipped at 0
  pair_mask      float32 [A, B]        1 for a real pair, 0 for a padding pair (FULL on every host)

Within micro-batch a the GLOBAL rows are the DESIGN.md layout: rows 0..B-1 chosen, rows B..2B-1
the matching rejected (B = micro_batch_size). A padding pair's rows are ``BOS`` then padding
(attention on the first position only, loss_mask 0). A pair row without a rejected response
(SFT on pair data) repeats the chosen tokens with loss_mask 0.

Multi-host: every host tokenises the whole split and builds the same plan (same seed), then
materialises only its rows ``[process_index * R/P, (process_index+1) * R/P)`` of the row axis
(R_h = R / P; R must divide by P). This is the block a data-sharded
``jax.make_array_from_process_local_data(sharding, local, (A, R, T))`` expects when the batch axis
is sharded over devices in process order; ``row_range`` overrides it for other device orders.
``pair_mask`` is tiny and given in full: place it replicated.

Plan of an epoch (deterministic in (seed, epoch)): permute the examples (if shuffle), put each in
the smallest bucket that holds it, cut each bucket into batches of G in order, carrying a
bucket's remainder into the next larger bucket; the one final remainder is padded with padding
pairs (or dropped with drop_last); then permute the batch order (if shuffle). Every epoch thus has
floor(N / G) (+1 unless drop_last) batches. The iterator state is {"epoch", "position"} plus
fingerprints checked on restore.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from almol_jax.data.tokenize import Row, TokenizedExample

PAD_INDEX = -1  # a padding pair in a plan


def bucket_lengths(buckets: Sequence[int], max_length: int) -> tuple[int, ...]:
    """The padded lengths in use: the configured buckets plus max_length, ascending."""
    return tuple(sorted({int(b) for b in buckets if b <= max_length} | {int(max_length)}))


def bucket_of(length: int, lengths: Sequence[int]) -> int:
    """The smallest bucket length >= length (ValueError naming it when none fits)."""
    for b in lengths:
        if length <= b:
            return b
    raise ValueError(f"row length {length} exceeds the largest bucket {lengths[-1]}")


def plan_epoch(
    example_lengths: Sequence[int],
    *,
    global_batch: int,
    lengths: Sequence[int],
    seed: int,
    epoch: int,
    shuffle: bool,
    drop_last: bool,
) -> list[tuple[int, np.ndarray]]:
    """[(T, example indices int64[global_batch], PAD_INDEX for padding pairs)] of one epoch."""
    n = len(example_lengths)
    rng = np.random.default_rng([int(seed), int(epoch)])
    order = rng.permutation(n) if shuffle else np.arange(n)
    pools: dict[int, list[int]] = {b: [] for b in lengths}
    for i in order:
        pools[bucket_of(example_lengths[i], lengths)].append(int(i))
    batches: list[tuple[int, np.ndarray]] = []
    carry: list[int] = []
    for b in lengths:
        pool = carry + pools[b]
        full = len(pool) // global_batch
        for k in range(full):
            batches.append((b, np.asarray(pool[k * global_batch : (k + 1) * global_batch])))
        carry = pool[full * global_batch :]
    if carry and not drop_last:
        last = np.full(global_batch, PAD_INDEX, dtype=np.int64)
        last[: len(carry)] = carry
        batches.append((max(bucket_of(example_lengths[i], lengths) for i in carry), last))
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def host_row_range(global_rows: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[start, stop) of the global rows this host materialises (contiguous, in process order)."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"{process_index=} must be in [0, {process_count=})")
    if global_rows % process_count:
        raise ValueError(
            f"global rows 2 * micro_batch_size = {global_rows} do not divide by {process_count=}"
        )
    per = global_rows // process_count
    return process_index * per, (process_index + 1) * per


def _fill_row(
    row: Row | None,
    t_len: int,
    bos_id: int,
    pad_id: int,
    with_loss: bool,
    out: dict,
    a: int,
    r: int,
) -> None:
    if row is None:  # padding pair
        out["input_ids"][a, r, 0] = bos_id
        out["attention_mask"][a, r, 0] = 1
        return
    ids = row.prompt_ids + row.response_ids
    n, p = len(ids), len(row.prompt_ids)
    if n > t_len:
        raise ValueError(f"row of length {n} does not fit the bucket length {t_len}")
    out["input_ids"][a, r, :n] = ids
    out["attention_mask"][a, r, :n] = 1
    if with_loss:
        out["loss_mask"][a, r, p:n] = 1.0


def assemble(
    examples: Sequence[TokenizedExample],
    indices: np.ndarray,
    *,
    t_len: int,
    micro_batch_size: int,
    grad_accum: int,
    bos_id: int,
    pad_id: int,
    row_range: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """The host-local arrays of one global batch (see the module docstring for the layout)."""
    b = micro_batch_size
    if len(indices) != b * grad_accum:
        raise ValueError(
            f"{len(indices)} pair indices for micro_batch_size {b} x grad_accum {grad_accum}"
        )
    start, stop = row_range if row_range is not None else (0, 2 * b)
    if not 0 <= start < stop <= 2 * b:
        raise ValueError(f"row_range={row_range} must lie within [0, {2 * b}]")
    shape = (grad_accum, stop - start, t_len)
    out = {
        "input_ids": np.full(shape, pad_id, dtype=np.int32),
        "attention_mask": np.zeros(shape, dtype=np.int32),
        "loss_mask": np.zeros(shape, dtype=np.float32),
    }
    pair_idx = np.asarray(indices).reshape(grad_accum, b)
    for a in range(grad_accum):
        for r, g in enumerate(range(start, stop)):
            i = int(pair_idx[a, g % b])
            if i == PAD_INDEX:
                _fill_row(None, t_len, bos_id, pad_id, False, out, a, r)
                continue
            ex = examples[i]
            if g < b:
                _fill_row(ex.chosen, t_len, bos_id, pad_id, True, out, a, r)
            elif ex.rejected is not None:
                _fill_row(ex.rejected, t_len, bos_id, pad_id, True, out, a, r)
            else:  # pair data (SFT): repeat the chosen row, no loss
                _fill_row(ex.chosen, t_len, bos_id, pad_id, False, out, a, r)
    out["positions"] = np.maximum(np.cumsum(out["attention_mask"], axis=-1) - 1, 0).astype(np.int32)
    out["pair_mask"] = (pair_idx != PAD_INDEX).astype(np.float32)
    return out


class BatchIterator:
    """Seeded, resumable iterator over static-shape global batches (host-local arrays).

    ``loop=True`` (training) runs through epochs forever; ``loop=False`` (validation) stops after
    one epoch. ``state()`` / ``restore(state)`` give and take a small JSON-able dict.
    """

    def __init__(
        self,
        examples: Sequence[TokenizedExample],
        *,
        micro_batch_size: int,
        grad_accum: int,
        max_length: int,
        buckets: Sequence[int] = (),
        bos_id: int,
        pad_id: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        loop: bool = True,
        process_index: int = 0,
        process_count: int = 1,
        row_range: tuple[int, int] | None = None,
    ):
        if micro_batch_size < 1 or grad_accum < 1:
            raise ValueError(f"{micro_batch_size=} and {grad_accum=} must be >= 1")
        if not examples:
            raise ValueError("no examples to batch (empty split after filtering)")
        self.examples = list(examples)
        self.micro_batch_size, self.grad_accum = micro_batch_size, grad_accum
        self.global_batch = micro_batch_size * grad_accum
        self.lengths = bucket_lengths(buckets, max_length)
        self.bos_id, self.pad_id = int(bos_id), int(pad_id)
        self.seed, self.shuffle, self.drop_last, self.loop = seed, shuffle, drop_last, loop
        self.row_range = row_range or host_row_range(
            2 * micro_batch_size, process_index, process_count
        )
        self._example_lengths = [ex.length for ex in self.examples]
        for ex, n in zip(self.examples, self._example_lengths, strict=True):
            if n > max_length:
                raise ValueError(f"{ex.origin}: row length {n} exceeds {max_length=}")
        self.batches_per_epoch = len(self.examples) // self.global_batch + (
            0 if drop_last or len(self.examples) % self.global_batch == 0 else 1
        )
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{len(self.examples)} examples make no full batch of {self.global_batch} pairs with drop_last"
            )
        self.epoch, self.position = 0, 0
        self._plan: tuple[int, list[tuple[int, np.ndarray]]] | None = None

    @classmethod
    def from_config(
        cls,
        cfg: Any,
        examples: Sequence[TokenizedExample],
        tokenizer: Any,
        *,
        train: bool = True,
        process_index: int = 0,
        process_count: int = 1,
        row_range: tuple[int, int] | None = None,
        seed: int | None = None,
    ) -> BatchIterator:
        """The training (shuffled, looping) or validation (ordered, one pass) iterator of a RunConfig."""
        d, t = cfg.data, cfg.train
        return cls(
            examples,
            micro_batch_size=t.micro_batch_size,
            grad_accum=t.grad_accum,
            max_length=d.max_length,
            buckets=d.buckets,
            bos_id=tokenizer.bos_token_id,
            pad_id=tokenizer.pad_token_id,
            seed=cfg.seed if seed is None else seed,
            shuffle=d.shuffle and train,
            drop_last=d.drop_last and train,
            loop=train,
            process_index=process_index,
            process_count=process_count,
            row_range=row_range,
        )

    def plan(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """The (T, pair indices) batches of an epoch (cached for the current one)."""
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (
                epoch,
                plan_epoch(
                    self._example_lengths,
                    global_batch=self.global_batch,
                    lengths=self.lengths,
                    seed=self.seed,
                    epoch=epoch,
                    shuffle=self.shuffle,
                    drop_last=self.drop_last,
                ),
            )
        return self._plan[1]

    def state(self) -> dict[str, int]:
        """JSON-able position: the next batch is batch ``position`` of epoch ``epoch``."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "num_examples": len(self.examples),
            "global_batch": self.global_batch,
            "seed": int(self.seed),
        }

    def restore(self, state: dict[str, int]) -> None:
        """Continues from a ``state()``; the data, batch size and seed must be the same."""
        for key, have in (
            ("num_examples", len(self.examples)),
            ("global_batch", self.global_batch),
            ("seed", int(self.seed)),
        ):
            if key in state and int(state[key]) != have:
                raise ValueError(
                    f"iterator state {key}={state[key]} does not match this run's {have}"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.batches_per_epoch:
            raise ValueError(
                f"iterator state {state} is out of range ({self.batches_per_epoch} batches/epoch)"
            )
        self.epoch, self.position = epoch, position

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.position >= self.batches_per_epoch:
            if not self.loop:
                raise StopIteration
            self.epoch, self.position = self.epoch + 1, 0
        t_len, indices = self.plan(self.epoch)[self.position]
        self.position += 1
        return assemble(
            self.examples,
            indices,
            t_len=t_len,
            micro_batch_size=self.micro_batch_size,
            grad_accum=self.grad_accum,
            bos_id=self.bos_id,
            pad_id=self.pad_id,
            row_range=self.row_range,
        )

    def padding_stats(self, epoch: int = 0) -> dict[str, Any]:
        """Bucket use and padding shares of an epoch's plan (for the data report)."""
        plan = self.plan(epoch)
        per_bucket: dict[int, int] = {}
        pad_pairs = real_tokens = all_tokens = 0
        for t_len, idx in plan:
            per_bucket[t_len] = per_bucket.get(t_len, 0) + 1
            pad_pairs += int(np.sum(idx == PAD_INDEX))
            all_tokens += 2 * len(idx) * t_len
            for i in idx[idx != PAD_INDEX]:
                ex = self.examples[int(i)]
                real_tokens += ex.chosen.length + (ex.rejected or ex.chosen).length
        return {
            "batches_per_epoch": len(plan),
            "batches_per_bucket": {str(k): v for k, v in sorted(per_bucket.items())},
            "padding_pairs": pad_pairs,
            "padding_token_share": round(1 - real_tokens / max(all_tokens, 1), 4),
        }
