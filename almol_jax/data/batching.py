"""Static-shape batches from length buckets, a seeded resumable iterator, and per-host splits.

One optimizer step consumes a GLOBAL batch of G = micro_batch_size * grad_accum pairs, all padded
to one bucket length T (the smallest of data.buckets + [max_length] holding every row), so the
jitted step compiles once per bucket, never per batch. ``next(iterator)`` returns the host-local
part of that global batch in the plain layout of docs/DESIGN.md (numpy):

  input_ids      int32   [2 G_h, T]  rows 0..G_h-1 chosen, rows G_h..2 G_h-1 the matching rejected
  attention_mask int32   [2 G_h, T]  1 on prompt + response tokens, 0 on right padding
  loss_mask      float32 [2 G_h, T]  1 where token t is a response token (incl. EOS) predicted from
                                     t-1 (TRL's labels != -100); prompt and padding 0
  positions      int32   [2 G_h, T]  cumsum(attention_mask) - 1, clipped at 0
  pair_mask      float32 [G_h]       1 for a real pair, 0 for a padding pair

G_h = G / process_count: host h holds pairs [h G_h, (h+1) G_h) of the global batch (contiguous
blocks in process order; G must divide by the process count). Every host tokenises the whole
split and builds the same plan from the same seed, then materialises only its pairs. The plain
layout is the tests' oracle; training takes the indexed layout from iterators that wrap this one
and follow its plan (almol_jax.data.prefix_sharing.PairRowIterator, packing.PackedIterator).

A padding pair's rows are BOS then padding (attention on the first position only, loss_mask 0).
A pair without a rejected response (SFT on (molecule, caption) pairs) repeats the chosen tokens
in its rejected row with loss_mask 0.

Plan of an epoch (deterministic in (seed, epoch)): permute the examples (if shuffle), put each in
the smallest bucket that holds it, cut each bucket into batches of G in order, carrying a
bucket's remainder into the next larger bucket; the one final remainder is padded with padding
pairs (or dropped with drop_last); then permute the batch order (if shuffle). Every epoch thus has
floor(N / G) (+1 unless drop_last or G divides N) batches. ``state()`` is {"epoch", "position"}
plus fingerprints (example count, global batch, seed) that ``restore`` checks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from almol_jax.data.tokenize import Row, TokenizedExample
from almol_jax.seeds import data_seed

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


def host_pair_range(global_pairs: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[start, stop) of the global batch's pairs this host materialises (contiguous blocks)."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"{process_index=} must be in [0, {process_count=})")
    if global_pairs % process_count:
        raise ValueError(
            f"global batch of {global_pairs} pairs (micro_batch_size * grad_accum) does not divide "
            f"by {process_count=}"
        )
    per = global_pairs // process_count
    return process_index * per, (process_index + 1) * per


def _fill_row(row: Row | None, out: dict, r: int, bos_id: int, with_loss: bool) -> None:
    if row is None:  # padding pair: BOS then padding, so every row has one valid key
        out["input_ids"][r, 0] = bos_id
        out["attention_mask"][r, 0] = 1
        return
    ids = row.prompt_ids + row.response_ids
    n, p = len(ids), len(row.prompt_ids)
    t_len = out["input_ids"].shape[1]
    if n > t_len:
        raise ValueError(f"row of length {n} does not fit the bucket length {t_len}")
    out["input_ids"][r, :n] = ids
    out["attention_mask"][r, :n] = 1
    if with_loss:
        out["loss_mask"][r, p:n] = 1.0


def assemble(
    examples: Sequence[TokenizedExample],
    indices: np.ndarray,
    *,
    t_len: int,
    bos_id: int,
    pad_id: int,
) -> dict[str, np.ndarray]:
    """The plain-layout arrays of the pairs ``indices`` (PAD_INDEX = padding pair).

    Rows 0..B-1 are the chosen rows, rows B..2B-1 the matching rejected rows (B = len(indices)).
    """
    b = len(indices)
    shape = (2 * b, t_len)
    out = {
        "input_ids": np.full(shape, pad_id, dtype=np.int32),
        "attention_mask": np.zeros(shape, dtype=np.int32),
        "loss_mask": np.zeros(shape, dtype=np.float32),
    }
    for j, i in enumerate(np.asarray(indices).tolist()):
        if i == PAD_INDEX:
            _fill_row(None, out, j, bos_id, False)
            _fill_row(None, out, b + j, bos_id, False)
            continue
        ex = examples[i]
        _fill_row(ex.chosen, out, j, bos_id, True)
        if ex.rejected is not None:
            _fill_row(ex.rejected, out, b + j, bos_id, True)
        else:  # pair data (SFT): repeat the chosen row, without loss
            _fill_row(ex.chosen, out, b + j, bos_id, False)
    out["positions"] = np.maximum(np.cumsum(out["attention_mask"], axis=-1) - 1, 0).astype(np.int32)
    out["pair_mask"] = (np.asarray(indices) != PAD_INDEX).astype(np.float32)
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
        self.pair_range = host_pair_range(self.global_batch, process_index, process_count)
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
        seed: int | None = None,
    ) -> BatchIterator:
        """The training (shuffled, looping) or validation (ordered, one pass) iterator of a RunConfig.

        The order's seed is drawn from the run's "data" key (`seeds.data_seed`) unless given.
        """
        d, t = cfg.data, cfg.train
        return cls(
            examples,
            micro_batch_size=t.micro_batch_size,
            grad_accum=t.grad_accum,
            max_length=d.max_length,
            buckets=d.buckets,
            bos_id=tokenizer.bos_token_id,
            pad_id=tokenizer.pad_token_id,
            seed=data_seed(cfg.seed) if seed is None else seed,
            shuffle=d.shuffle and train,
            drop_last=d.drop_last and train,
            loop=train,
            process_index=process_index,
            process_count=process_count,
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
        batch = self._batch(self.epoch, self.position)
        self.position += 1
        return batch

    def _batch(self, epoch: int, position: int) -> dict[str, np.ndarray]:
        t_len, indices = self.plan(epoch)[position]
        start, stop = self.pair_range
        return assemble(
            self.examples, indices[start:stop], t_len=t_len, bos_id=self.bos_id, pad_id=self.pad_id
        )

    def peek(self) -> dict[str, np.ndarray]:
        """The batch ``next()`` would return, without advancing (e.g. to compile ahead)."""
        epoch, position = self.epoch, self.position
        if position >= self.batches_per_epoch:
            if not self.loop:
                raise StopIteration
            epoch, position = epoch + 1, 0
        return self._batch(epoch, position)

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
