"""One-pair rows wired into the training loop (issue 8): the indexed iterator serves the same
pairs as the plain one (per host, with equal shapes on every host; prefix-shared or not), and a
short run with data.prefix_sharing=on logs the same per-step losses as the same run with it off
(unshared rows), the first step's equal to the plain-layout oracle's (in one process, and,
marked slow, in two processes against one unshared process)."""

import socket
import subprocess

import numpy as np
import pytest
from train_runs import (
    NO_VALIDATION,
    REPO,
    TINY,
    assert_hosts_concatenate,
    env_with_devices,
    overrides,
    plain_oracle_first_step,
    run_train,
    three_step_config,
    three_step_run,
    train_cmd,
    train_records,
)

from almol_jax.config import load_config
from almol_jax.data.batching import BatchIterator
from almol_jax.data.prefix_sharing import (
    PairRowIterator,
    plain_to_triplets,
    use_prefix_sharing,
)
from almol_jax.data.report import DataReport
from almol_jax.data.tokenize import prepare_split
from almol_jax.data.tokenizer import load_tokenizer

KEYS = ("loss", "nll_loss", "rewards/margins", "logps/chosen", "logps/rejected", "grad_norm")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _examples(cfg):
    tokenizer = load_tokenizer(cfg.tokenizer)
    return prepare_split(cfg, tokenizer, "train", DataReport()), tokenizer


def _iterators(cfg, examples, tokenizer, process_index=0, process_count=1, share_prefix=True):
    kw = dict(train=True, process_index=process_index, process_count=process_count)
    plain = BatchIterator.from_config(cfg, examples, tokenizer, **kw)
    inner = BatchIterator.from_config(cfg, examples, tokenizer, **kw)
    rows = PairRowIterator(inner, share_prefix=share_prefix, row_buckets=inner.lengths)
    return plain, rows


def _indexed_triplets(batch, share_prefix):
    """(prompt, chosen, rejected) of each row of a one-pair-per-row indexed batch: one group
    (segment 1), or prompt + chosen (segment 1) and the same prompt + rejected (segment 2)."""
    out = []
    for r in range(batch["input_ids"].shape[0]):
        if batch["pair_mask"][r, 0] == 0:
            out.append(None)
            continue
        ids, role, seg = batch["input_ids"][r], batch["role_ids"][r], batch["segment_ids"][r]
        valid = batch["attention_mask"][r] > 0
        prompts = [ids[valid & (role == 0) & (seg == s)].tolist() for s in (1, 2)]
        assert prompts[1] == ([] if share_prefix else prompts[0])
        out.append((prompts[0], *(ids[valid & (role == k)].tolist() for k in (1, 2))))
    return out


@pytest.mark.parametrize("share_prefix", [True, False])
def test_iterator_serves_the_plain_pairs_resumes_and_splits_hosts(tmp_path, share_prefix):
    cfg = load_config(TINY, overrides(tmp_path, "train.micro_batch_size=3"))
    examples, tokenizer = _examples(cfg)
    plain, shared = _iterators(cfg, examples, tokenizer, share_prefix=share_prefix)
    n = plain.batches_per_epoch + 2  # crosses an epoch boundary (and a padded last batch)
    for _ in range(n):
        p, s = next(plain), next(shared)
        triplets, pair_mask = plain_to_triplets(p)
        want = [t if m > 0 else None for t, m in zip(triplets, pair_mask, strict=True)]
        assert _indexed_triplets(s, share_prefix) == want
        np.testing.assert_array_equal(s["pair_mask"][:, 0], pair_mask)
        assert s["input_ids"].shape[1] % 64 == 0 or s["input_ids"].shape[1] in shared.row_buckets
        assert shared.state() == plain.state()
    # resume mid-epoch: the same next batch
    state = shared.state()
    want = next(shared)
    _, again = _iterators(cfg, examples, tokenizer, share_prefix=share_prefix)
    again.restore(state)
    peeked, got = again.peek(), next(again)
    for key in want:
        np.testing.assert_array_equal(peeked[key], want[key])
        np.testing.assert_array_equal(got[key], want[key])
    # two hosts: equal shapes, and their rows concatenated are the single-host batch
    hosts = [
        _iterators(cfg, examples, tokenizer, h, 2, share_prefix=share_prefix)[1] for h in range(2)
    ]
    whole = _iterators(cfg, examples, tokenizer, share_prefix=share_prefix)[1]
    assert_hosts_concatenate(hosts, whole, steps=3)


def test_prefix_sharing_resolution_in_config_terms(tmp_path):
    for mode, objective, want in (
        ("auto", "cpo", True),
        ("auto", "sft", False),
        ("on", "sft", True),
    ):
        cfg = load_config(
            TINY, overrides(tmp_path, f"data.prefix_sharing={mode}", f"objective.name={objective}")
        )
        assert use_prefix_sharing(cfg.data.prefix_sharing, cfg.objective.name) is want


def _run(tmp_path, name, mode, *extra):
    def groups_per_row(batch):
        return int(batch["segment_ids"].max())

    return three_step_run(tmp_path / name, groups_per_row, f"data.prefix_sharing={mode}", *extra)


def test_run_with_prefix_sharing_logs_the_same_losses_as_unshared_rows_and_the_oracle(tmp_path):
    off_train, off_eval, off_seen = _run(tmp_path, "off", "off")
    on_train, on_eval, on_seen = _run(tmp_path, "on", "on")
    assert off_seen == [2] * 3 and on_seen == [1] * 3  # unshared and shared rows really ran
    assert [r["step"] for r in on_train] == [r["step"] for r in off_train] == [1, 2, 3]
    for a, b in zip(on_train, off_train, strict=True):
        for key in KEYS:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert len(on_eval) == len(off_eval) == 1
    for key in ("eval/loss", "eval/nll_loss", "eval/rewards/margins"):
        np.testing.assert_allclose(on_eval[0][key], off_eval[0][key], rtol=1e-5, atol=1e-6)
    # step 1 (the fresh parameters) against the plain layout's full logits
    oracle = plain_oracle_first_step(three_step_config(tmp_path / "oracle"))
    for key in KEYS[:-1]:
        np.testing.assert_allclose(off_train[0][key], oracle[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_processes_place_prefix_shared_rows_like_one_unshared_process(tmp_path):
    """Multi-process `to_global` of indexed batches (rows split across processes): two processes
    with prefix sharing on log the losses of one process with unshared rows."""
    run = ("train.steps=3", NO_VALIDATION, "checkpoint.every=1000", "mesh.data=2", "mesh.fsdp=2")
    port = _free_port()
    procs = [
        subprocess.Popen(
            train_cmd(
                tmp_path / "multi",
                *run,
                "data.prefix_sharing=on",
                f"mesh.coordinator_address=127.0.0.1:{port}",
                "mesh.num_processes=2",
                f"mesh.process_id={i}",
            ),
            env=env_with_devices(2),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    single = run_train(tmp_path / "single", *run, "data.prefix_sharing=off", devices=4)
    assert single.returncode == 0, single.stderr[-4000:]
    for p in procs:
        _, err = p.communicate(timeout=500)
        assert p.returncode == 0, err[-4000:]
    multi, ref = train_records(tmp_path / "multi"), train_records(tmp_path / "single")
    assert [r["step"] for r in multi] == [r["step"] for r in ref] == [1, 2, 3]
    for a, b in zip(multi, ref, strict=True):
        for key in KEYS:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
