"""Packing wired into the training loop (issue 8, data.packing on): the packed iterator serves
exactly the plain iterator's pairs each step (several per row, rows a multiple of grad_accum x
shards, two hosts' rows concatenating to one host's batch), and short CPO and SFT runs with
packing on log the same per-step losses as the same runs with it off (one pair per row), the
first step's equal to the plain-layout oracle's."""

from collections import Counter

import numpy as np
import pytest
from train_runs import (
    TINY,
    assert_hosts_concatenate,
    assert_records_close,
    overrides,
    plain_oracle_first_step,
    three_step_config,
    three_step_run,
)

from almol_jax.config import load_config
from almol_jax.data.batching import BatchIterator
from almol_jax.data.packing import PackedIterator
from almol_jax.data.prefix_sharing import plain_to_triplets
from almol_jax.data.report import DataReport
from almol_jax.data.tokenize import prepare_split
from almol_jax.data.tokenizer import load_tokenizer

KEYS = ("loss", "nll_loss", "rewards/margins", "logps/chosen", "logps/rejected", "grad_norm")


def _setup(tmp_path, *extra):
    cfg = load_config(TINY, overrides(tmp_path, "train.micro_batch_size=6", *extra))
    tokenizer = load_tokenizer(cfg.tokenizer)
    return cfg, prepare_split(cfg, tokenizer, "train", DataReport()), tokenizer


def _packed(cfg, examples, tokenizer, *, host=0, hosts=1, multiple=2, max_slots=3):
    kw = dict(train=True, process_index=host, process_count=hosts)
    inner = BatchIterator.from_config(cfg, examples, tokenizer, **kw)
    return PackedIterator(
        inner,
        row_len=2 * cfg.data.max_length,
        max_slots=max_slots,
        row_multiple=multiple,
        process_index=host,
        process_count=hosts,
    )


def _packed_triplets(batch):
    """Counter of (prompt, chosen, rejected) token tuples held by a packed batch."""
    out = Counter()
    for r in range(batch["input_ids"].shape[0]):
        ids, role, seg = batch["input_ids"][r], batch["role_ids"][r], batch["segment_ids"][r]
        valid = batch["attention_mask"][r] > 0
        for slot in np.flatnonzero(batch["pair_mask"][r]):
            labels = batch["label_slot"][r] == slot
            segs = set(seg[batch["label_src"][r][labels & (batch["label_role"][r] > 0)]].tolist())
            pieces = []
            for k in (0, 1, 2):
                pieces.append(tuple(ids[valid & (role == k) & np.isin(seg, list(segs))].tolist()))
            out[tuple(pieces)] += 1
    return out


def test_packed_iterator_serves_the_plain_pairs_and_splits_hosts(tmp_path):
    cfg, examples, tokenizer = _setup(tmp_path)
    plain = BatchIterator.from_config(cfg, examples, tokenizer, train=True)
    packed = _packed(cfg, examples, tokenizer)
    for _ in range(plain.batches_per_epoch + 1):  # crosses an epoch boundary
        p, k = next(plain), next(packed)
        triplets, pair_mask = plain_to_triplets(p)
        want = Counter(
            tuple(map(tuple, t)) for t, m in zip(triplets, pair_mask, strict=True) if m > 0
        )
        assert _packed_triplets(k) == want
        rows = k["input_ids"].shape[0]
        assert rows % 2 == 0 and rows < int(pair_mask.sum())  # several pairs a row
        assert k["label_ids"].shape[1] % 64 == 0
        assert packed.state() == plain.state()
    assert 0.3 < packed.efficiency() <= 1.0
    hosts = [_packed(cfg, examples, tokenizer, host=h, hosts=2) for h in range(2)]
    whole = _packed(cfg, examples, tokenizer)
    assert_hosts_concatenate(hosts, whole, steps=3)


def test_an_example_longer_than_a_row_is_named(tmp_path):
    cfg, examples, tokenizer = _setup(tmp_path)
    inner = BatchIterator.from_config(cfg, examples, tokenizer, train=True)
    with pytest.raises(ValueError, match="data.pack_length=16"):
        PackedIterator(inner, row_len=16, max_slots=2)


def _run(tmp_path, name, *extra):
    def slots(batch):
        return batch["pair_mask"].shape[1]

    return three_step_run(tmp_path / name, slots, "train.micro_batch_size=4", *extra)


@pytest.mark.parametrize("objective", ["cpo", "sft"])
def test_run_with_packing_logs_the_same_losses(tmp_path, objective):
    common = (f"objective.name={objective}", "train.grad_accum=2", "data.pack_max_pairs=3")
    off_train, off_eval, off_seen = _run(tmp_path, "off", *common)
    on_train, on_eval, on_seen = _run(tmp_path, "on", *common, "data.packing=on")
    assert off_seen == [1] * 3 and on_seen == [3] * 3  # the packed layout really ran
    keys = KEYS if objective == "cpo" else ("loss", "nll_loss", "grad_norm")
    for a, b in zip(on_train, off_train, strict=True):
        assert_records_close(a, b, keys, rtol=2e-5, atol=1e-6)
    assert len(on_eval) == len(off_eval) == 1
    np.testing.assert_allclose(on_eval[0]["eval/loss"], off_eval[0]["eval/loss"], rtol=2e-5)
    # step 1 (the fresh parameters) against the plain layout's full logits
    cfg = three_step_config(tmp_path / "oracle", "train.micro_batch_size=4", *common)
    oracle = plain_oracle_first_step(cfg)
    for key in keys[:-1]:
        np.testing.assert_allclose(on_train[0][key], oracle[key], rtol=2e-5, atol=1e-6)
