"""Activation sharding by logical names (sharding.ActivationSharding): with FSDP the compiled train
step keeps rows local and gathers weights, i.e. no activation-sized all-reduce, as the compiler's
own HLO shows. The same model without the constraints (as before issue 16) all-reduces
[rows, T, F]-sized activations: the count can fail."""

from __future__ import annotations

import pytest
from jax.sharding import PartitionSpec

from almol_jax.model.llama import ROWS as ROWS_NAMES
from almol_jax.sharding import DEFAULT_RULES, logical_to_spec
from tests.aot_fixtures import SMALL_BF16, all_reduces_at_least, programs

ROWS, T, D = 16, 256, 256


@pytest.mark.slow
def test_fsdp_train_step_has_no_activation_all_reduce():
    overrides = [*SMALL_BF16, "model.attention_impl=xla", f"train.micro_batch_size={ROWS}"]
    overrides.append("train.grad_accum=1")
    local_rows = ROWS // 8
    counts = {}
    for constrained in (True, False):
        p = programs("v5e-8", overrides, constrain_activations=constrained)
        compiled = p.lowered("train", ROWS, T, 128).compile()
        counts[constrained] = all_reduces_at_least(compiled.as_text(), local_rows * T * D)
    assert counts[True] == [], counts[True][:3]
    assert len(counts[False]) > 0  # unconstrained: XLA splits the residual stream by D instead


def test_activation_names_resolve_by_the_parameter_rules():
    """A mesh axis serves one dimension per array: rows take data x fsdp, so an activation's
    "embed" stays whole although the weights' "embed" rule is fsdp; heads and mlp go to tensor."""
    assert logical_to_spec(ROWS_NAMES, DEFAULT_RULES) == PartitionSpec(("data", "fsdp"), None, None)
    heads = logical_to_spec(("batch", "length", "heads", None), DEFAULT_RULES)
    assert heads == PartitionSpec(("data", "fsdp"), None, "tensor", None)
    mlp = logical_to_spec(("batch", "length", "mlp"), DEFAULT_RULES)
    assert mlp == PartitionSpec(("data", "fsdp"), None, "tensor")
