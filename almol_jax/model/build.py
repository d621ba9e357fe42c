"""Building models: random init (already sharded under a mesh) and load_model from HF weights.

Under a mesh the parameters are created by one jitted init whose out_shardings come from each
variable's logical names and the rules, so no device ever holds a full unsharded copy.
"""

from __future__ import annotations

import functools

import jax
from flax import nnx
from jax.sharding import Mesh

from almol_jax.model.config import ModelConfig
from almol_jax.model.llama import LlamaForCausalLM
from almol_jax.model.lora_config import LoraConfig
from almol_jax.sharding import Rules, freeze_rules, state_shardings


def abstract_model(
    config: ModelConfig,
    *,
    lora: LoraConfig | None = None,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
):
    """(graphdef, abstract state) of the model for `mesh` (its kernels and activation
    sharding; sharding.ActivationSharding): shapes, dtypes and metadata, no memory.

    Cached per (config, lora, mesh, rules); the returned state must be treated as read-only.
    """
    return _abstract_model(config, lora, mesh, freeze_rules(rules))


@functools.lru_cache(maxsize=32)
def _abstract_model(config, lora, mesh, rules):
    abstract = nnx.eval_shape(
        lambda: LlamaForCausalLM(config, lora=lora, rngs=nnx.Rngs(0), mesh=mesh, rules=rules)
    )
    return nnx.split(abstract)


_SELECTIONS = {"all": ..., "non_param": nnx.Not(nnx.Param)}


def _stream_keys(rngs: nnx.Rngs | jax.Array | int) -> dict[str, jax.Array]:
    """{stream: key} of the init: an nnx.Rngs's streams (params, lora, dropout) by their keys, or
    one key (an int seed) as the "default" stream that every draw then takes from."""
    if isinstance(rngs, nnx.Rngs):
        return {name: stream.key[...] for name, stream in rngs.items()}
    return {"default": jax.random.key(rngs) if isinstance(rngs, int) else rngs}


@functools.lru_cache(maxsize=32)
def _jitted_init(config, lora, mesh, rules, only: str, streams: tuple[str, ...]):
    """One compiled init per (config, lora, mesh, rules, selection, stream names)."""
    selection = _SELECTIONS[only]

    def init(keys):
        rngs = nnx.Rngs(**dict(zip(streams, keys, strict=True)))
        model = LlamaForCausalLM(config, lora=lora, rngs=rngs, mesh=mesh, rules=rules)
        return nnx.state(model, selection)

    if mesh is None:
        return jax.jit(init)
    abstract = jax.eval_shape(init, tuple(jax.random.key(0) for _ in streams))
    return jax.jit(init, out_shardings=state_shardings(abstract, mesh, rules))


def init_state(
    config: ModelConfig,
    *,
    lora: LoraConfig | None,
    rngs: nnx.Rngs | jax.Array | int,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
    only: str = "all",
) -> nnx.State:
    """Random-init state of the variables selected by `only` ("all" or "non_param"), sharded on
    `mesh` when given. Variables not selected are never materialised (XLA drops their init).
    """
    if only not in _SELECTIONS:
        raise ValueError(f"only={only!r} not in {sorted(_SELECTIONS)}")
    rules = freeze_rules(rules)
    keys = _stream_keys(rngs)
    return _jitted_init(config, lora, mesh, rules, only, tuple(keys))(tuple(keys.values()))


def build_model(
    config: ModelConfig,
    *,
    lora: LoraConfig | None = None,
    rngs: nnx.Rngs | jax.Array | int = 0,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
) -> LlamaForCausalLM:
    """A randomly initialised model (HF-like init: N(0, initializer_range), LoRA like PEFT).

    `rngs`: an nnx.Rngs with streams "params" (base weights), "lora" (adapter A) and "dropout"
    (adapter dropout), or one PRNG key / int seed that every draw takes from. With a mesh, every
    variable is created directly with its NamedSharding.
    """
    graphdef, _ = abstract_model(config, lora=lora, mesh=mesh, rules=rules)
    state = init_state(config, lora=lora, rngs=rngs, mesh=mesh, rules=rules)
    return nnx.merge(graphdef, state)


def load_model(
    path_or_repo_id: str,
    *,
    dtype: str = "float32",
    param_dtype: str | None = None,
    lora: LoraConfig | None = None,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
    rngs: nnx.Rngs | jax.Array | int = 0,
    config_overrides: dict | None = None,
    revision: str | None = None,
) -> LlamaForCausalLM:
    """Loads a LLaMA-family HF checkpoint (local dir or hub repo id) as an NNX model.

    `dtype` is the compute dtype, `param_dtype` the base storage dtype (default: `dtype`);
    adapters (when `lora` is given) are freshly initialised from `rngs` (B = 0, so the loaded
    model's outputs are unchanged).
    """
    from almol_jax.model.hf_weights import load_hf_params, resolve_checkpoint_dir

    ckpt_dir = resolve_checkpoint_dir(path_or_repo_id, revision=revision)
    overrides = dict(dtype=dtype, param_dtype=param_dtype or dtype, **(config_overrides or {}))
    config = ModelConfig.from_hf_config(ckpt_dir / "config.json", **overrides)
    graphdef, abstract = abstract_model(config, lora=lora, mesh=mesh, rules=rules)
    params = load_hf_params(ckpt_dir, config, abstract, mesh=mesh, rules=rules)
    rest = init_state(
        config,
        lora=lora,
        rngs=rngs,
        mesh=mesh,
        rules=rules,
        only="non_param",
    )
    return nnx.merge(graphdef, params, rest)
