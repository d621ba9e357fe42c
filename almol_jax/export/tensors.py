"""Our NNX variables as Hugging Face / PEFT tensors, described lazily and fetched one at a time.

Each exported tensor is a `TensorSpec` whose `fetch()` runs a small jitted transform on the
device(s) holding the variable (cut the vocab padding, fold LoRA in, transpose [in, out] to HF's
[out, in], cast to the export dtype), then gathers only that result to the host:
`jax.device_get` when the array is addressable here, `multihost_utils.process_allgather` on
multi-host runs (a collective: every process calls every fetch in the same order). Only process
0 gets the values back; the others get None and write nothing. The HF name mapping is the
model's own (`almol_jax.model.hf_weights.hf_name`).
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from almol_jax.export.streaming import TensorSpec
from almol_jax.model.hf_weights import HFName, hf_name
from almol_jax.model.lora import LoRAParam

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def is_writer() -> bool:
    """Whether this process writes files (process 0 of a multi-host run)."""
    return jax.process_index() == 0


def gather_to_host(x_on_device: jax.Array) -> np.ndarray | None:
    """The full value of one (possibly sharded, possibly multi-host) array on process 0."""
    if isinstance(x_on_device, jax.Array) and not x_on_device.is_fully_addressable:
        from jax.experimental import multihost_utils

        host = multihost_utils.process_allgather(x_on_device, tiled=True)
    else:
        host = jax.device_get(x_on_device)
    return np.asarray(host) if is_writer() else None


@functools.partial(jax.jit, static_argnames=("transpose", "keep", "vocab_axis", "dtype"))
def _to_hf_layout(x, *, transpose: bool, keep: int, vocab_axis: int | None, dtype):
    if vocab_axis is not None:
        x = jax.lax.slice_in_dim(x, 0, keep, axis=vocab_axis)
    x = x.astype(dtype)
    return x.T if transpose else x


@functools.partial(jax.jit, static_argnames=("dtype",))
def _merged_hf_layout(kernel_IO, lora_a_IR, lora_b_RO, scale, *, dtype):
    """(W + scale * A @ B).T computed in float32, then cast: HF's [out, in] merged weight."""
    delta_IO = jnp.matmul(
        lora_a_IR.astype(jnp.float32),
        lora_b_RO.astype(jnp.float32),
        precision=jax.lax.Precision.HIGHEST,
    )
    return (kernel_IO.astype(jnp.float32) + scale * delta_IO).astype(dtype).T


def _hf_shape(name: HFName, shape: tuple[int, ...], vocab_size: int) -> tuple[int, ...]:
    shape = list(shape)
    if name.vocab_axis is not None:
        shape[name.vocab_axis] = vocab_size
    return tuple(reversed(shape)) if name.transpose else tuple(shape)


def _hf_order(key: str) -> tuple:
    """embed, layers in numeric order, final norm, lm_head: the order HF checkpoints use."""
    layer = _LAYER.search(key)
    if layer is not None:
        return (1, int(layer.group(1)), key)
    if "embed_tokens" in key:
        return (0, 0, key)
    return (2, 0, key)


def _flat(state: nnx.State) -> dict[tuple[str, ...], nnx.Variable]:
    return {
        tuple(str(p) for p in path): var
        for path, var in nnx.to_flat_state(state)
        if var is not None
    }


def _plain_spec(path, var, vocab_size: int, dtype: np.dtype) -> TensorSpec:
    name = hf_name(path)
    value = var[...]
    fetch = functools.partial(
        lambda v, n: gather_to_host(
            _to_hf_layout(
                v, transpose=n.transpose, keep=vocab_size, vocab_axis=n.vocab_axis, dtype=dtype
            )
        ),
        value,
        name,
    )
    return TensorSpec(name.key, _hf_shape(name, value.shape, vocab_size), dtype, fetch)


def model_tensor_specs(model: nnx.Module, dtype: np.dtype, *, merge_lora: bool) -> list[TensorSpec]:
    """The base model's HF tensors (config.vocab_size rows), LoRA folded in when `merge_lora`.

    With `merge_lora=False` the adapters are ignored (the base alone, as the DPO reference sees it).
    """
    config = model.config
    params = _flat(nnx.state(model, nnx.Param))
    adapters = _flat(nnx.state(model, LoRAParam)) if merge_lora else {}
    lora_cfg = getattr(model, "lora_config", None)
    if adapters and lora_cfg is None:
        raise ValueError("model holds LoRAParam variables but has no lora_config (scale unknown)")
    specs = []
    for path, var in params.items():
        prefix = path[:-1]
        a, b = adapters.get((*prefix, "lora_a")), adapters.get((*prefix, "lora_b"))
        if path[-1] != "kernel" or a is None:
            specs.append(_plain_spec(path, var, config.vocab_size, dtype))
            continue
        name = hf_name(path)
        w, a_val, b_val = var[...], a[...], b[...]
        fetch = functools.partial(
            lambda w, a, b, s: gather_to_host(_merged_hf_layout(w, a, b, s, dtype=dtype)),
            w,
            a_val,
            b_val,
            jnp.float32(lora_cfg.scale),
        )
        specs.append(
            TensorSpec(name.key, _hf_shape(name, w.shape, config.vocab_size), dtype, fetch)
        )
    used = {(*p[:-1], leaf) for p in params for leaf in ("lora_a", "lora_b")}
    orphans = sorted(".".join(p) for p in adapters if p not in used)
    if orphans:
        raise ValueError(f"LoRA variables without a base kernel to merge into: {orphans[:5]}")
    return sorted(specs, key=lambda s: _hf_order(s.name))


def adapter_tensor_specs(model: nnx.Module, dtype: np.dtype) -> list[TensorSpec]:
    """PEFT tensors of the adapters: ...lora_A.weight [R, in], ...lora_B.weight [out, R]."""
    adapters = _flat(nnx.state(model, LoRAParam))
    if not adapters:
        raise ValueError("model has no LoRA adapters (LoRAParam variables) to export as PEFT")
    vocab_size = model.config.vocab_size
    specs = [_plain_spec(path, var, vocab_size, dtype) for path, var in adapters.items()]
    return sorted(specs, key=lambda s: _hf_order(s.name))


def adapted_module_names(model: nnx.Module) -> list[str]:
    """PEFT target names (q_proj, ...) of the projections that carry adapters, sorted."""
    return sorted({path[-2] for path in _flat(nnx.state(model, LoRAParam))})
