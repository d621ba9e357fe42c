"""LlamaForCausalLM as an NNX module (Hugging Face's LLaMA architecture, our [in, out] layout).

Parameter tree (paths mirror HF names, see docs/model.md): model.embed_tokens.embedding [Vp, D],
model.layers[i].{input_layernorm,post_attention_layernorm}.scale [D],
model.layers[i].self_attn.{q,k,v,o}_proj.kernel, model.layers[i].mlp.{gate,up,down}_proj.kernel,
model.norm.scale [D], lm_head.kernel [D, Vp] (absent when tie_word_embeddings).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import Mesh

from almol_jax.model.attention import Attention, build_mask, take_rows
from almol_jax.model.config import BLOCK_INPUT, REMAT_POLICIES, ModelConfig
from almol_jax.model.kernels import Kernels, choose
from almol_jax.model.kv_cache import KVCache
from almol_jax.model.lora import Linear, project
from almol_jax.model.lora_config import LoraConfig
from almol_jax.model.rope import inv_frequencies, rope_tables
from almol_jax.ops.attention import NEG_INF
from almol_jax.sharding import NO_CONSTRAINTS, ActivationSharding, Rules, freeze_rules

ROWS = ("batch", "length", "embed")  # the residual stream's logical axes


def _after(block: nnx.Module, gate: jax.Array | None) -> nnx.Module:
    """``block`` with weights usable only once ``gate`` exists (an optimization barrier).

    In a decode step (one token per row) nothing orders the layers' weights: under FSDP the
    unrolled loop let XLA gather every layer's weights at the start, the whole model on every
    device (Meditron-7B: 11.3 GiB of temporaries per H200 of eight, 10.6 per v5e chip). Gated on
    the input of the layer before, a layer's weights are gathered while that layer runs, and at
    most two layers' are whole at a time (1.0 / 1.3 GiB). Values are unchanged. The prefill is
    not gated: on v5e-8 the gate made it larger (XLA relaid out every layer's weight shard up
    front, +1.6 GiB), on 8 x H200 smaller (docs/tpu.md)."""
    if gate is None:
        return block
    graphdef, state = nnx.split(block)
    state, _ = jax.lax.optimization_barrier((state, gate))
    return nnx.merge(graphdef, state)


class RMSNorm(nnx.Module):
    """HF LlamaRMSNorm: float32 statistics, cast back, then scale."""

    def __init__(self, config: ModelConfig, *, kernels: Kernels, rngs: nnx.Rngs):
        del rngs
        d = config.hidden_size
        self.scale = nnx.Param(
            jnp.ones((d,), config.storage_dtype), out_sharding=("norm",), eager_sharding=False
        )
        self.eps = config.rms_norm_eps
        self.dtype = config.compute_dtype
        self.kernels = kernels

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        return self.kernels.rms_norm(x_BTD, self.scale[...], self.eps, self.dtype)


class Embed(nnx.Module):
    """Token embedding [Vp, D]; rows >= vocab_size are padding (zeros)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        vp, v, d = config.padded_vocab_size, config.vocab_size, config.hidden_size
        table = config.initializer_range * jax.random.normal(rngs.params(), (vp, d))
        table = jnp.where(jnp.arange(vp)[:, None] < v, table, 0.0)
        self.embedding = nnx.Param(
            table.astype(config.storage_dtype),
            out_sharding=("vocab", "embed"),
            eager_sharding=False,
        )
        self.dtype = config.compute_dtype

    def __call__(self, ids_BT: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids_BT, axis=0).astype(self.dtype)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        lora: LoraConfig | None,
        kernels: Kernels,
        rngs: nnx.Rngs,
        activations: ActivationSharding = NO_CONSTRAINTS,
    ):
        d, f = config.hidden_size, config.intermediate_size
        common = dict(
            use_bias=config.mlp_bias,
            dtype=config.compute_dtype,
            param_dtype=config.storage_dtype,
            init_std=config.initializer_range,
            rngs=rngs,
            kernels=kernels,
            lora=lora,
        )
        self.gate_proj = Linear(d, f, axes=("embed", "mlp"), name="gate_proj", **common)
        self.up_proj = Linear(d, f, axes=("embed", "mlp"), name="up_proj", **common)
        self.down_proj = Linear(f, d, axes=("mlp", "embed"), name="down_proj", **common)
        self.kernels = kernels
        self.activations = activations

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        g_BTF, u_BTF = project((self.gate_proj, self.up_proj), x_BTD)
        h_BTF = self.kernels.swiglu(g_BTF, u_BTF)
        h_BTF = self.activations.constrain(h_BTF, ("batch", "length", "mlp"))
        return self.activations.constrain(self.down_proj(h_BTF), ROWS)


class Block(nnx.Module):
    """Pre-norm decoder layer: x + attn(norm(x)); x + mlp(norm(x))."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        lora: LoraConfig | None,
        kernels: Kernels,
        rngs: nnx.Rngs,
        activations: ActivationSharding = NO_CONSTRAINTS,
    ):
        common = dict(lora=lora, kernels=kernels, rngs=rngs, activations=activations)
        self.input_layernorm = RMSNorm(config, kernels=kernels, rngs=rngs)
        self.self_attn = Attention(config, **common)
        self.post_attention_layernorm = RMSNorm(config, kernels=kernels, rngs=rngs)
        self.mlp = MLP(config, **common)
        self.activations = activations

    def __call__(self, x_BTD, rope, mask, kv_BKSH=None, end_index=None, query_index_BL=None):
        """[B, T, D] -> [B, T, D], or [B, L, D]: the rows at `query_index_BL` (see Attention)."""
        attn_BTD, kv_BKSH = self.self_attn(
            self.input_layernorm(x_BTD), rope, mask, kv_BKSH, end_index, query_index_BL
        )
        if query_index_BL is not None:
            x_BTD = take_rows(x_BTD, query_index_BL)
        x_BTD = x_BTD + attn_BTD
        x_BTD = x_BTD + self.mlp(self.post_attention_layernorm(x_BTD))
        return self.activations.constrain(x_BTD, ROWS), kv_BKSH


def _run_block(block, x_BTD, rope, mask, kv_BKSH, end_index, query_index_BL=None):
    # named so that a remat policy may keep (or offload) it; every use inside reads the name
    x_BTD = checkpoint_name(x_BTD, BLOCK_INPUT)
    return block(x_BTD, rope, mask, kv_BKSH, end_index, query_index_BL)


class LlamaModel(nnx.Module):
    """Embedding, decoder layers and final norm (HF's `model.` prefix)."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        lora: LoraConfig | None,
        kernels: Kernels,
        rngs: nnx.Rngs,
        activations: ActivationSharding,
    ):
        self.embed_tokens = Embed(config, rngs=rngs)
        self.layers = nnx.List(
            [
                Block(config, lora=lora, kernels=kernels, rngs=rngs, activations=activations)
                for _ in range(config.num_hidden_layers)
            ]
        )
        self.norm = RMSNorm(config, kernels=kernels, rngs=rngs)


class LlamaForCausalLM(nnx.Module):
    """Causal LM: `model(input_ids_BT, attention_mask_BT, ...)` -> float32 logits [B, T, V].

    The kernel table (model/kernels.py) is chosen here, once, from `config.kernels` and the
    devices of `mesh` (this process's devices without one); with a mesh the activations are
    constrained by the logical-axis `rules` (sharding.ActivationSharding)."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        lora: LoraConfig | None = None,
        rngs: nnx.Rngs,
        mesh: Mesh | None = None,
        rules: Rules | None = None,
    ):
        self.config = config
        self.lora_config = lora
        kernels = choose(config, None if mesh is None else list(mesh.devices.flat))
        self.activations = ActivationSharding(mesh, freeze_rules(rules))
        self.model = LlamaModel(
            config, lora=lora, kernels=kernels, rngs=rngs, activations=self.activations
        )
        if config.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = Linear(
                config.hidden_size,
                config.padded_vocab_size,
                axes=("embed", "vocab"),
                use_bias=False,
                dtype=config.compute_dtype,
                param_dtype=config.storage_dtype,
                init_std=config.initializer_range,
                rngs=rngs,
                kernels=kernels,
                lora=None,
                name="lm_head",
            )

    def hidden_states(
        self,
        input_ids_BT: jax.Array,
        attention_mask_BT: jax.Array | None = None,
        *,
        positions_BT: jax.Array | None = None,
        segment_ids_BT: jax.Array | None = None,
        role_ids_BT: jax.Array | None = None,
        mask_BTS: jax.Array | None = None,
        cache: KVCache | None = None,
        output_index_BL: jax.Array | None = None,
    ):
        """Final-normed hidden states [B, T, D] (and the new cache when `cache` is given).

        With `output_index_BL` they are returned at those row indices only, [B, L, D] (= the
        full result gathered there), and the last layer computes queries, attention outputs and
        its MLP at those rows only (its other rows feed only its keys and values, which are
        cached as usual).
        """
        b, t = input_ids_BT.shape
        if attention_mask_BT is None:
            attention_mask_BT = jnp.ones((b, t), jnp.int32)
        valid_BT = attention_mask_BT.astype(bool)
        if cache is None:
            end_index = jnp.zeros((), jnp.int32)
            key_valid_BS = valid_BT
            offset_B = jnp.zeros((b,), jnp.int32)
        else:
            if segment_ids_BT is not None:
                raise ValueError("segment_ids_BT cannot be combined with a KV cache")
            end_index = cache.end_index
            key_valid_BS = jax.lax.dynamic_update_slice(
                cache.key_valid_BS, valid_BT, (0, end_index)
            )
            offset_B = jnp.sum(cache.key_valid_BS, axis=-1, dtype=jnp.int32)
        if positions_BT is None:
            positions_BT = offset_B[:, None] + jnp.cumsum(valid_BT, axis=-1, dtype=jnp.int32) - 1
            positions_BT = jnp.maximum(positions_BT, 0)
        mask = build_mask(
            key_valid_BS,
            end_index if cache is not None else 0,
            t,
            segment_ids_BT=segment_ids_BT,
            role_ids_BT=role_ids_BT,
            mask_BTS=mask_BTS,
            with_codes=cache is None,
        )
        policy = self.config.remat
        run = (
            _run_block
            if policy == "none"
            else nnx.remat(
                _run_block,
                policy=REMAT_POLICIES[policy],
                prevent_cse=True,
                # the train step merges the model inside value_and_grad / lax.scan: no graph
                # updates may leak out of the rematerialised block
                graph_updates=False,
            )
        )
        # positions lie in [0, T) without a cache (training rows, prompts) and in [0, S) with one
        num_positions = t if cache is None else cache.max_length
        rope = rope_tables(positions_BT, inv_frequencies(self.config), num_positions)
        x_BTD = self.activations.constrain(self.model.embed_tokens(input_ids_BT), ROWS)
        new_k, new_v = [], []
        last = len(self.model.layers) - 1
        gate = None  # decoding one token: the previous layer's input (_after)
        for i, block in enumerate(self.model.layers):
            if cache is not None and t == 1:
                block, gate = _after(block, gate), x_BTD
            kv_BKSH = None if cache is None else (cache.k[i], cache.v[i])
            query_index_BL = output_index_BL if i == last else None
            x_BTD, kv_BKSH = run(block, x_BTD, rope, mask, kv_BKSH, end_index, query_index_BL)
            if cache is not None:
                new_k.append(kv_BKSH[0])
                new_v.append(kv_BKSH[1])
        h_BTD = self.model.norm(x_BTD)
        if cache is None:
            return h_BTD
        new_cache = KVCache(
            k=tuple(new_k),
            v=tuple(new_v),
            end_index=end_index + t,
            key_valid_BS=key_valid_BS,
        )
        return h_BTD, new_cache

    def lm_head_logits(self, h_BTD: jax.Array) -> jax.Array:
        """float32 logits over the PADDED vocabulary; padded columns are -1e30."""
        dtype = self.config.compute_dtype
        if self.lm_head is None:
            w_DV = self.model.embed_tokens.embedding[...].T
        else:
            w_DV = self.lm_head.kernel[...]
        logits_BTV = jnp.einsum(
            "...d,dv->...v",
            h_BTD.astype(dtype),
            w_DV.astype(dtype),
            preferred_element_type=jnp.float32,
        )
        vp, v = self.config.padded_vocab_size, self.config.vocab_size
        if vp == v:
            return logits_BTV
        return jnp.where(jnp.arange(vp) < v, logits_BTV, NEG_INF)

    def __call__(
        self,
        input_ids_BT: jax.Array,
        attention_mask_BT: jax.Array | None = None,
        *,
        positions_BT: jax.Array | None = None,
        segment_ids_BT: jax.Array | None = None,
        mask_BTS: jax.Array | None = None,
        cache: KVCache | None = None,
    ):
        """float32 logits [B, T, vocab_size] over the true vocabulary (and the new cache)."""
        out = self.hidden_states(
            input_ids_BT,
            attention_mask_BT,
            positions_BT=positions_BT,
            segment_ids_BT=segment_ids_BT,
            mask_BTS=mask_BTS,
            cache=cache,
        )
        h_BTD, new_cache = (out, None) if cache is None else out
        logits_BTV = self.lm_head_logits(h_BTD)[..., : self.config.vocab_size]
        return logits_BTV if cache is None else (logits_BTV, new_cache)
