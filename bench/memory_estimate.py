"""Per-chip memory of the ALMol recipe on TPU pods, computed from the model config + sharding rules.

    python bench/memory_estimate.py                       # Meditron-7B recipe on v4-8 and v5e-8
    python bench/memory_estimate.py --preset cpo-small --lora-r 16 --pods cpu

Parameters: every variable of the abstract model (almol_jax.model.build.abstract_model, no
memory allocated) with its logical axis names, resolved by the sharding rules
(almol_jax.sharding.logical_to_spec) on the pod's mesh: bytes / product of the mesh axes that
shard it. Frozen base in bf16; LoRA adapters fp32 with gradients, the accumulation buffer of the
train step's scan and AdamW's two moments (5 x adapter bytes).

Activations (estimate, full per-block remat, bf16 compute, prefix-shared rows of `row_len`
tokens with `label_len` response labels): the saved block inputs (L x tokens x D), plus the
working set of one block recomputed in the backward pass (its forward intermediates and their
cotangents: ~2 x (8 D + 3 F) values per token, attention scores and probabilities [N, T, S] in
fp32 per row, the bool masks [T, S]), plus the vocab-chunked log-prob working set
([labels, chunk] fp32 x 3) and the gathered hidden states. Heads, kv heads and mlp activations
divide by the "tensor" axis; rows divide by the data-parallel ways (data x fsdp).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Pod:
    """A slice: chips and HBM per chip (what one JAX device sees)."""

    name: str
    chips: int
    hbm_gib: float


PODS = {
    "v4-8": Pod("v4-8", 4, 32.0),  # 4 chips (2 TensorCores each, one JAX device per chip)
    "v5e-8": Pod("v5e-8", 8, 16.0),
    "v5p-8": Pod("v5p-8", 4, 95.0),
    "cpu": Pod("cpu", 1, 16.0),
}


def param_bytes_per_chip(config, lora, mesh_sizes: dict, rules=None) -> dict:
    """{"base": bytes, "adapters": bytes, "largest_unsharded": (path, bytes)} per chip."""
    from flax import nnx

    from almol_jax.model.build import abstract_model
    from almol_jax.model.lora import LoRAParam
    from almol_jax.sharding import logical_to_spec, variable_names

    _, state = abstract_model(config, lora=lora)
    out = {"base": 0, "adapters": 0, "base_total": 0, "adapters_total": 0}
    flat = nnx.to_flat_state(state)
    for path, var in flat:
        shape = tuple(var.shape)
        nbytes = math.prod(shape) * var.dtype.itemsize
        names = variable_names(var)
        spec = logical_to_spec(names if len(names) == len(shape) else (None,) * len(shape), rules)
        shards = 1
        for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
            if axes is None:
                continue
            axes = (axes,) if isinstance(axes, str) else axes
            size = math.prod(mesh_sizes[a] for a in axes)
            if dim % size:
                raise ValueError(
                    f"{'.'.join(map(str, path))} {shape} does not divide by {axes}={size}"
                )
            shards *= size
        kind = "adapters" if isinstance(var, LoRAParam) else "base"
        out[kind] += nbytes // shards
        out[kind + "_total"] += nbytes
    return out


def activation_bytes_per_chip(
    config, *, rows_per_chip: int, row_len: int, label_len: int, tensor: int, vocab_chunk: int
) -> dict:
    """Estimated activation bytes per chip for one micro-batch (see the module docstring)."""
    d, f, n, layers = (
        config.hidden_size,
        config.intermediate_size,
        config.num_attention_heads,
        config.num_hidden_layers,
    )
    act = 2  # bf16
    tokens = rows_per_chip * row_len
    saved = (layers + 1) * tokens * d * act
    per_token_block = 2 * (8 * d + 3 * f / tensor) * act
    attn = (
        rows_per_chip * (n / tensor) * row_len * row_len * 4 * 2 * 2
    )  # scores+probs, + cotangents
    masks = 2 * rows_per_chip * row_len * row_len  # role mask + combined mask (bool)
    block = tokens * per_token_block + attn + masks
    labels = rows_per_chip * label_len
    chunk = min(vocab_chunk, config.padded_vocab_size)
    logits = labels * (chunk * 4 * 3 + d * 4 * 2)
    return {"saved_block_inputs": saved, "one_block_working_set": block, "logprobs": logits}


def estimate(args, pod: Pod, mesh: dict, micro_pairs_per_chip: int) -> dict:
    from almol_jax.model.config import ModelConfig
    from almol_jax.model.lora_config import LoraConfig

    config = ModelConfig.preset(args.preset, dtype="bfloat16", param_dtype="bfloat16", remat="full")
    lora = LoraConfig(r=args.lora_r, alpha=args.lora_alpha, param_dtype="float32")
    p = param_bytes_per_chip(config, lora, mesh)
    a = activation_bytes_per_chip(
        config,
        rows_per_chip=micro_pairs_per_chip,
        row_len=args.row_len,
        label_len=args.label_len,
        tensor=mesh["tensor"],
        vocab_chunk=args.vocab_chunk,
    )
    dp = mesh["data"] * mesh["fsdp"]
    accum = max(1, args.pairs // (micro_pairs_per_chip * dp))
    trainable = 5 * p["adapters"]  # params, micro grads, accumulated grads, AdamW mu and nu
    total = p["base"] + trainable + sum(a.values())
    return {
        "pod": pod.name,
        "mesh": f"data={mesh['data']} fsdp={mesh['fsdp']} tensor={mesh['tensor']}",
        "micro_pairs_per_chip": micro_pairs_per_chip,
        "grad_accum": accum,
        "base_gib": p["base"] / GIB,
        "adapters_total_m": p["adapters_total"] / 4 / 1e6,
        "trainable_state_gib": trainable / GIB,
        "activations_gib": sum(a.values()) / GIB,
        "total_gib": total / GIB,
        "hbm_gib": pod.hbm_gib,
        "fits": total / GIB < 0.9 * pod.hbm_gib,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="meditron-7b")
    parser.add_argument("--lora-r", type=int, default=64)
    parser.add_argument("--lora-alpha", type=float, default=16.0)
    parser.add_argument("--pairs", type=int, default=64, help="pairs per optimizer step")
    parser.add_argument("--row-len", type=int, default=768, help="prefix-shared row: 256 + 2 x 256")
    parser.add_argument("--label-len", type=int, default=512)
    parser.add_argument("--vocab-chunk", type=int, default=8192)
    parser.add_argument("--pods", default="v4-8,v5e-8")
    args = parser.parse_args()
    rows = []
    for name in args.pods.split(","):
        pod = PODS[name]
        meshes = [{"data": 1, "fsdp": pod.chips, "tensor": 1}]
        if pod.chips >= 4:
            meshes.append({"data": 1, "fsdp": pod.chips // 2, "tensor": 2})
        for mesh in meshes:
            for m in (1, 2, 4, 8):
                rows.append(estimate(args, pod, mesh, m))
    head = (
        "| pod | mesh | pairs/chip/micro | grad_accum | base GiB | adapters+grads+AdamW GiB "
        "| activations GiB | total GiB/chip | HBM GiB | fits (<90%) |"
    )
    print(
        f"{args.preset}, LoRA r{args.lora_r} all-linear ({rows[0]['adapters_total_m']:.1f}M adapter "
        f"params), {args.pairs} pairs/step, rows {args.row_len} tokens, {args.label_len} labels"
    )
    print(head)
    print("|" + "---|" * 10)
    for r in rows:
        print(
            f"| {r['pod']} | {r['mesh']} | {r['micro_pairs_per_chip']} | {r['grad_accum']} "
            f"| {r['base_gib']:.2f} | {r['trainable_state_gib']:.2f} | {r['activations_gib']:.2f} "
            f"| {r['total_gib']:.2f} | {r['hbm_gib']:.0f} | {'yes' if r['fits'] else 'no'} |"
        )


if __name__ == "__main__":
    main()
