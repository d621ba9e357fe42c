"""The training loop's data: tokenizer, tokenised splits, the resumable training iterator, fresh
validation passes, the data report and the step count. Nothing is written here: the tokenizer and
the report go into the run directory after a resume was checked (train/resume.py).

Thin glue over almol_jax.data (tokenizer, tokenize.prepare_split, batching.BatchIterator,
report.DataReport); every process tokenises the whole split and materialises its own pairs.
Batches come in the indexed layout (docs/DESIGN.md), from the plain BatchIterator's plan (the
same pairs per step, the same resumable state): one row per pair (prefix_sharing.PairRowIterator;
the prompt shared when `data.prefix_sharing` resolves on, prefix_sharing.use_prefix_sharing: auto
= on for the pair-scoring objectives) or, with data.packing on, several pairs per row
(packing.PackedIterator).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax

from almol_jax.data.batching import BatchIterator
from almol_jax.data.packing import PackedIterator
from almol_jax.data.prefix_sharing import PairRowIterator, use_prefix_sharing
from almol_jax.data.report import DataReport
from almol_jax.data.sources import split_files
from almol_jax.data.tokenize import prepare_split
from almol_jax.data.tokenizer import check_vocab_fits, load_tokenizer
from almol_jax.errors import ConfigError
from almol_jax.run.setup import model_config


@dataclasses.dataclass
class RunData:
    """What the loop needs from the data pipeline."""

    tokenizer: Any
    train: Any  # PairRowIterator / PackedIterator: next(), peek(), state(), restore(state)
    validation: Callable[[], Iterator[dict]]  # a fresh one-pass validation iterator
    has_validation: bool
    steps_per_epoch: int
    total_steps: int
    report: Any
    # direction -> a fresh one-pass iterator over that direction's validation pairs only
    # (empty when the validation split holds a single direction)
    validation_by_direction: dict[str, Callable[[], Iterator[dict]]] = dataclasses.field(
        default_factory=dict
    )


def total_steps_for(train_cfg, steps_per_epoch: int) -> int:
    """train.steps when set, else ceil(epochs * batches per epoch)."""
    if train_cfg.steps:
        return int(train_cfg.steps)
    return max(1, int(math.ceil(train_cfg.epochs * steps_per_epoch)))


def check_files(data_cfg) -> None:
    """ConfigError naming the first configured data file that does not exist."""
    for split in ("train", "validation"):
        for path in getattr(data_cfg, f"{split}_files"):
            if not Path(path).is_file():
                raise ConfigError(f"data.{split}_files: {str(path)!r} does not exist")


def build_data(cfg, *, batch_shards: int = 1) -> RunData:
    """Reads, tokenises and batches the train/validation splits of a RunConfig.

    `batch_shards`: how many devices the batch axis is split over (data x fsdp); packed batches
    get a row count divisible by it times train.grad_accum; one-pair rows need a global batch
    (micro_batch_size x grad_accum pairs) divisible by it.
    """
    check_files(cfg.data)
    tokenizer = load_tokenizer(cfg.tokenizer)
    where = repr(cfg.model.source) if cfg.model.source else f"preset {cfg.model.preset!r}"
    check_vocab_fits(tokenizer, model_config(cfg).vocab_size, where)
    report = DataReport()
    kw = dict(process_index=jax.process_index(), process_count=jax.process_count())
    train_examples = prepare_split(cfg, tokenizer, "train", report)
    shared = use_prefix_sharing(cfg.data.prefix_sharing, cfg.objective.name)

    packing = cfg.data.packing == "on"
    # rows split into micro-batches, each over the batch shards (and hence over the processes)
    row_multiple = cfg.train.grad_accum * math.lcm(batch_shards, jax.process_count())
    global_batch = cfg.train.micro_batch_size * cfg.train.grad_accum
    if not packing and global_batch % batch_shards:
        raise ConfigError(
            f"train.micro_batch_size x train.grad_accum = {global_batch} pairs (one row each) "
            f"do not split over the {batch_shards} data-parallel devices (mesh data x fsdp)"
        )

    def batches(examples, train: bool):
        plain = BatchIterator.from_config(cfg, examples, tokenizer, train=train, **kw)
        if packing:
            return PackedIterator(
                plain,
                row_len=cfg.data.pack_length or 2 * cfg.data.max_length,
                max_slots=cfg.data.pack_max_pairs,
                row_multiple=row_multiple,
                responses="chosen" if cfg.objective.name == "sft" else "both",
                **kw,
            )
        return PairRowIterator(plain, share_prefix=shared, row_buckets=plain.lengths)

    train = batches(train_examples, True)
    batching = dict(train.padding_stats())
    if packing:  # the share of packed row tokens that are real, over epoch 0
        batching["packing_efficiency"] = round(train.efficiency(), 4)
    report.set_batching("train", batching)
    val_examples = []
    if split_files(cfg.data, "validation"):
        val_examples = prepare_split(cfg, tokenizer, "validation", report)

    def validation() -> Iterator[dict]:
        if not val_examples:
            return iter(())
        return batches(val_examples, False)

    if val_examples:
        report.set_batching("validation", validation().padding_stats())
    by_direction: dict[str, Callable[[], Iterator[dict]]] = {}
    directions = sorted({ex.direction for ex in val_examples})
    if len(directions) > 1:
        for direction in directions:
            subset = [ex for ex in val_examples if ex.direction == direction]
            by_direction[direction] = functools.partial(batches, subset, False)
    return RunData(
        tokenizer=tokenizer,
        train=train,
        validation=validation,
        has_validation=bool(val_examples),
        validation_by_direction=by_direction,
        steps_per_epoch=train.batches_per_epoch,
        total_steps=total_steps_for(cfg.train, train.batches_per_epoch),
        report=report,
    )
