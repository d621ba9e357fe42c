"""bench/common.py's FLOP convention counted against the real indexed batches (prefix-shared and
unshared rows, as bench/train_step.py builds them)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from almol_jax.data.prefix_sharing import plain_batch, plain_to_indexed  # noqa: E402
from bench.common import (  # noqa: E402
    SHAPES,
    attended_pairs,
    label_query_pairs,
    processed_tokens,
    train_step_flops,
)
from bench.train_step import random_triplets  # noqa: E402


def _visible_BTS(batch) -> np.ndarray:
    """The model's attention rule on an indexed batch: causal, valid, same segment, role rule."""
    role, seg = batch["role_ids"], batch["segment_ids"]
    valid = batch["attention_mask"].astype(bool)
    t = role.shape[1]
    causal = np.tril(np.ones((t, t), bool))[None]
    same_seg = seg[:, :, None] == seg[:, None, :]
    role_ok = (role[:, None, :] == 0) | (role[:, None, :] == role[:, :, None])
    return causal & same_seg & role_ok & valid[:, None, :] & valid[:, :, None]


@pytest.mark.parametrize("layout", ["prefix_shared", "unshared"])
@pytest.mark.parametrize("name", ["tiny", "cpo-small"])
def test_pair_counts_match_the_batch_masks(name, layout):
    s = SHAPES[name]
    plain = plain_batch(random_triplets(s, s.pairs, seed=0))
    batch = plain_to_indexed(plain, share_prefix=layout == "prefix_shared")
    batch = {k: np.asarray(v) for k, v in batch.items()}
    visible = _visible_BTS(batch)
    assert int(visible.sum()) == attended_pairs(s, layout)
    assert int(batch["attention_mask"].sum()) == processed_tokens(s, layout)
    # the last layer's queries: the label sources (padding label slots excluded)
    used = batch["label_role"] > 0
    rows = [visible[b, batch["label_src"][b][used[b]]].sum() for b in range(len(visible))]
    assert int(sum(rows)) == label_query_pairs(s)


def test_label_queries_count_less_only_in_the_last_layer():
    s = SHAPES["cpo-small"]
    full = train_step_flops(s, "prefix_shared", response_only_logits=True)["total"]
    last = train_step_flops(s, "prefix_shared", response_only_logits=True, label_queries_last=True)[
        "total"
    ]
    d, f, labels = s.hidden_size, s.intermediate_size, s.pairs * (s.chosen_len + s.rejected_len)
    rows_saved = s.pairs * (s.prompt_len + s.chosen_len + s.rejected_len) - labels
    # q, o, gate, up, down (+ their LoRA), forward + input gradient + 2x LoRA, per saved row
    per_row = 2 * (2 * d * d + 3 * d * f) * 2 + 2 * (2 * (d + d) + 3 * (d + f)) * s.lora_r * 3
    hd = s.num_heads * s.head_dim
    attn_saved = 3 * 4 * hd * (attended_pairs(s, "prefix_shared") - label_query_pairs(s))
    assert full - last == rows_saved * per_row + attn_saved


def test_merged_lora_counts_the_merge_instead_of_the_forward_adapter_products():
    s = SHAPES["cpo-small"]
    plain = train_step_flops(s, "prefix_shared", response_only_logits=True)
    merged = train_step_flops(s, "prefix_shared", response_only_logits=True, merged_lora=True)
    d, f, r = s.hidden_size, s.intermediate_size, s.lora_r
    rows = s.pairs * (s.prompt_len + s.chosen_len + s.rejected_len)
    dims = [(d, d)] * 4 + [(d, f), (d, f), (f, d)]
    lora_fwd = sum(2 * (i * r + r * o) * rows for i, o in dims) * s.num_layers
    merge = sum(2 * i * r * o for i, o in dims) * s.num_layers
    assert plain["forward"] - merged["forward"] == lora_fwd - merge
    assert merged["backward"] - plain["backward"] == merge
