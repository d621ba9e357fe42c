"""Batching: static shapes from buckets, layout, epoch coverage, determinism, resume, host split."""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from almol_jax.config import load_config
from almol_jax.data.batching import PAD_INDEX, BatchIterator, bucket_lengths, plan_epoch
from almol_jax.data.report import DataReport
from almol_jax.data.tokenize import Row, TokenizedExample, prepare_split
from almol_jax.data.tokenizer import load_tokenizer

BOS, EOS, PAD = 1, 2, 3
REPO = Path(__file__).resolve().parents[1]


def make_examples(n, seed=0, with_rejected=True):
    """Synthetic examples whose tokens encode (example, kind) so rows can be traced back."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p, w, r = rng.integers(2, 20), rng.integers(1, 30), rng.integers(1, 30)
        prompt = (BOS, *[100 + i] * (p - 1))
        chosen = Row(prompt, (*[1000 + i] * (w - 1), EOS))
        rejected = Row(prompt, (*[2000 + i] * (r - 1), EOS)) if with_rejected else None
        out.append(TokenizedExample(chosen, rejected, "smiles2caption", f"ex{i}"))
    return out


def make_iter(examples, **kw):
    args = dict(
        micro_batch_size=4,
        grad_accum=2,
        max_length=64,
        buckets=(16, 32),
        bos_id=BOS,
        pad_id=PAD,
        seed=5,
    )
    args.update(kw)
    return BatchIterator(examples, **args)


def test_layout_of_one_batch():
    exs = make_examples(8)
    it = make_iter(exs, shuffle=False)
    b = next(it)
    assert b["input_ids"].shape == b["loss_mask"].shape == b["positions"].shape
    rows, t_len = b["input_ids"].shape
    assert rows == 16 and t_len in (16, 32, 64)
    assert b["pair_mask"].shape == (8,)
    idx = plan_epoch([e.length for e in exs], global_batch=8, lengths=it.lengths, seed=5, epoch=0,
                     shuffle=False, drop_last=False)[0][1]  # fmt: skip
    for j in range(8):
        ex = exs[idx[j]]
        for row, tokens in ((j, ex.chosen), (8 + j, ex.rejected)):  # chosen rows, then rejected
            n, p = tokens.length, len(tokens.prompt_ids)
            np.testing.assert_array_equal(
                b["input_ids"][row, :n], tokens.prompt_ids + tokens.response_ids
            )
            assert (b["input_ids"][row, n:] == PAD).all()
            np.testing.assert_array_equal(
                b["attention_mask"][row], (np.arange(t_len) < n).astype(np.int32)
            )
            want_loss = ((np.arange(t_len) >= p) & (np.arange(t_len) < n)).astype(np.float32)
            np.testing.assert_array_equal(b["loss_mask"][row], want_loss)
            np.testing.assert_array_equal(b["positions"][row, :n], np.arange(n))
            assert (b["positions"][row, n:] == n - 1).all()


def test_every_example_once_per_epoch_and_padding_pairs():
    exs = make_examples(37)
    it = make_iter(exs)
    assert it.batches_per_epoch == 5  # 4 full batches of 8 + one padded
    seen, pads = [], 0
    for t_len, idx in it.plan(0):
        assert t_len in bucket_lengths((16, 32), 64)
        real = idx[idx != PAD_INDEX]
        assert all(exs[i].length <= t_len for i in real)
        seen += real.tolist()
        pads += int(np.sum(idx == PAD_INDEX))
    assert sorted(seen) == list(range(37)) and pads == 3
    batches = [next(it) for _ in range(5)]
    assert sum(float(b["pair_mask"].sum()) for b in batches) == 37
    padded = next(b for b in batches if b["pair_mask"].sum() < 8)
    j = int(np.argwhere(padded["pair_mask"] == 0)[0, 0])
    for row in (j, 8 + j):  # a padding pair: BOS then padding, no loss
        assert padded["input_ids"][row, 0] == BOS and (padded["input_ids"][row, 1:] == PAD).all()
        assert padded["attention_mask"][row].sum() == 1 and padded["loss_mask"][row].sum() == 0
    # drop_last: floor(37 / 8) batches, no padding pairs
    it = make_iter(exs, drop_last=True)
    assert it.batches_per_epoch == 4 and all(
        b["pair_mask"].all() for b in (next(it) for _ in range(4))
    )


def test_shapes_come_from_the_bucket_set_only():
    exs = make_examples(100, seed=1)
    it = make_iter(exs, micro_batch_size=2, grad_accum=1)
    shapes = {next(it)["input_ids"].shape for _ in range(3 * it.batches_per_epoch)}
    assert {s[-1] for s in shapes} <= {16, 32, 64} and {s[0] for s in shapes} == {4}


def test_deterministic_and_epochs_differ():
    exs = make_examples(40)
    run1 = [next(make_iter(exs)) for _ in range(1)]
    a, b = make_iter(exs), make_iter(exs)
    for _ in range(12):  # crosses an epoch boundary (5 batches per epoch)
        x, y = next(a), next(b)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    np.testing.assert_array_equal(run1[0]["input_ids"], next(make_iter(exs))["input_ids"])
    it = make_iter(exs)
    orders = [np.concatenate([idx for _, idx in it.plan(e)]) for e in (0, 1)]
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(
        orders[0], np.concatenate([i for _, i in make_iter(exs, seed=6).plan(0)])
    )


def test_restore_mid_epoch_gives_the_same_subsequent_batches():
    exs = make_examples(40)
    ref = make_iter(exs)
    for _ in range(7):  # into epoch 1
        next(ref)
    state = json.loads(json.dumps(ref.state()))  # JSON-able
    assert (state["epoch"], state["position"]) == (1, 2)
    want = [next(ref) for _ in range(6)]
    fresh = make_iter(exs)
    fresh.restore(state)
    for w in want:
        g = next(fresh)
        for k in w:
            np.testing.assert_array_equal(g[k], w[k])
    with pytest.raises(ValueError, match="global_batch=8 does not match this run's 4"):
        make_iter(exs, micro_batch_size=2).restore(state)
    with pytest.raises(ValueError, match="num_examples=40 does not match"):
        make_iter(make_examples(41)).restore(state)


def test_validation_iterator_is_one_ordered_pass():
    exs = make_examples(19)
    it = make_iter(exs, shuffle=False, loop=False)
    batches = list(it)
    assert len(batches) == 3 and sum(b["pair_mask"].sum() for b in batches) == 19
    assert list(it) == []


@pytest.mark.parametrize("process_count", [2, 4, 8])
def test_host_split_covers_the_global_batch_exactly_once(process_count):
    exs = make_examples(30)
    full = make_iter(exs)
    hosts = [
        make_iter(exs, process_index=h, process_count=process_count) for h in range(process_count)
    ]
    per = 8 // process_count
    for _ in range(6):
        g = next(full)
        parts = [next(h) for h in hosts]
        for k in ("input_ids", "attention_mask", "loss_mask", "positions"):
            assert all(p[k].shape[0] == 2 * per for p in parts)
            chosen = np.concatenate([p[k][:per] for p in parts])
            rejected = np.concatenate([p[k][per:] for p in parts])
            np.testing.assert_array_equal(np.concatenate([chosen, rejected]), g[k])
        np.testing.assert_array_equal(
            np.concatenate([p["pair_mask"] for p in parts]), g["pair_mask"]
        )
    with pytest.raises(ValueError, match="does not divide by process_count=3"):
        make_iter(exs, process_index=0, process_count=3)


def test_peek_does_not_advance():
    it = make_iter(make_examples(20))
    for _ in range(7):
        ahead = it.peek()
        np.testing.assert_array_equal(ahead["input_ids"], next(it)["input_ids"])


def test_pair_rows_without_rejected_repeat_chosen_without_loss():
    exs = make_examples(4, with_rejected=False)
    b = next(make_iter(exs, micro_batch_size=4, grad_accum=1))
    np.testing.assert_array_equal(b["input_ids"][4:], b["input_ids"][:4])
    assert b["loss_mask"][:4].sum() > 0 and b["loss_mask"][4:].sum() == 0


def test_tiny_config_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the config's data paths are relative to the repository root
    cfg = load_config("configs/tiny.yaml")
    tok = load_tokenizer(cfg.tokenizer)
    report = DataReport()
    exs = prepare_split(cfg, tok, "train", report)
    it = BatchIterator.from_config(cfg, exs, tok)
    report.set_batching("train", it.padding_stats())
    b = next(it)
    assert b["input_ids"].shape[0] == 2 * cfg.train.grad_accum * cfg.train.micro_batch_size
    # Every row: BOS first; the loss covers the response incl. EOS.
    assert (b["input_ids"][..., 0] == tok.bos_token_id).all()
    ends = b["attention_mask"].sum(-1) - 1
    assert (np.take_along_axis(b["input_ids"], ends[..., None], -1) == tok.eos_token_id).all()
    report.to_json(tmp_path / "data_report.json")
    saved = json.loads((tmp_path / "data_report.json").read_text())
    assert saved["splits"]["train"]["total_examples"] == 64
    assert saved["splits"]["train"]["truncated"] == {} and saved["splits"]["train"]["dropped"] == {}
    assert saved["splits"]["train"]["batching"]["batches_per_epoch"] == 8


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(2, 64), min_size=1, max_size=60),
    global_batch=st.integers(1, 9),
    buckets=st.lists(st.integers(2, 64), max_size=3, unique=True).map(sorted),
    drop_last=st.booleans(),
    seed=st.integers(0, 3),
)
def test_plan_properties(lengths, global_batch, buckets, drop_last, seed):
    """Any data: each example at most once (exactly once unless drop_last), rows fit their T."""
    lens = bucket_lengths(buckets, 64)
    plan = plan_epoch(lengths, global_batch=global_batch, lengths=lens, seed=seed, epoch=1,
                      shuffle=True, drop_last=drop_last)  # fmt: skip
    seen = []
    for t_len, idx in plan:
        assert t_len in lens and len(idx) == global_batch
        real = idx[idx != PAD_INDEX]
        assert all(lengths[i] <= t_len for i in real)
        seen += real.tolist()
    assert len(seen) == len(set(seen))
    if drop_last:
        assert len(seen) == len(lengths) // global_batch * global_batch
    else:
        assert sorted(seen) == list(range(len(lengths)))
    assert sum(int(np.sum(idx == PAD_INDEX)) for _, idx in plan) < global_batch
