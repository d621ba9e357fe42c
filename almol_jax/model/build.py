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
from almol_jax.sharding import Rules, state_shardings


@functools.lru_cache(maxsize=32)
def abstract_model(config: ModelConfig, *, lora: LoraConfig | None = None):
    """(graphdef, abstract state) of the model: shapes, dtypes and metadata, no memory.

    Cached per (config, lora); the returned state must be treated as read-only.
    """
    abstract = nnx.eval_shape(lambda: LlamaForCausalLM(config, lora=lora, rngs=nnx.Rngs(0)))
    return nnx.split(abstract)


_DROPOUT_SALT = 0x5EED  # folds the init key into the LoRA-dropout stream's key
_SELECTIONS = {"all": ..., "non_param": nnx.Not(nnx.Param)}


@functools.lru_cache(maxsize=32)
def _jitted_init(config, lora, mesh, rules, only: str):
    """One compiled init per (config, lora, mesh, rules, selection)."""
    selection = _SELECTIONS[only]

    def init(key):
        # params come from `key` itself; the LoRA-dropout stream from a key derived from it
        rngs = nnx.Rngs(params=key, dropout=jax.random.fold_in(key, _DROPOUT_SALT))
        model = LlamaForCausalLM(config, lora=lora, rngs=rngs)
        return nnx.state(model, selection)

    if mesh is None:
        return jax.jit(init)
    abstract = jax.eval_shape(init, jax.random.key(0))
    return jax.jit(init, out_shardings=state_shardings(abstract, mesh, rules))


def init_state(
    config: ModelConfig,
    *,
    lora: LoraConfig | None,
    key: jax.Array,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
    only: str = "all",
) -> nnx.State:
    """Random-init state of the variables selected by `only` ("all" or "non_param"), sharded on
    `mesh` when given. Variables not selected are never materialised (XLA drops their init).
    """
    if only not in _SELECTIONS:
        raise ValueError(f"only={only!r} not in {sorted(_SELECTIONS)}")
    rules = (
        None
        if rules is None
        else tuple((k, v if not isinstance(v, list) else tuple(v)) for k, v in rules)
    )
    return _jitted_init(config, lora, mesh, rules, only)(key)


def build_model(
    config: ModelConfig,
    *,
    lora: LoraConfig | None = None,
    rngs: nnx.Rngs | jax.Array | int = 0,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
) -> LlamaForCausalLM:
    """A randomly initialised model (HF-like init: N(0, initializer_range), LoRA like PEFT).

    `rngs` may be an nnx.Rngs (its "params" stream, else "default", gives the key), a PRNG key or
    an int seed; the LoRA-dropout stream is derived from that key. With a mesh, every variable is created directly with its NamedSharding.
    """
    if isinstance(rngs, nnx.Rngs):
        key = rngs.params() if "params" in rngs else rngs.default()
    elif isinstance(rngs, int):
        key = jax.random.key(rngs)
    else:
        key = rngs
    graphdef, _ = abstract_model(config, lora=lora)
    state = init_state(config, lora=lora, key=key, mesh=mesh, rules=rules)
    return nnx.merge(graphdef, state)


def load_model(
    path_or_repo_id: str,
    *,
    dtype: str = "float32",
    param_dtype: str | None = None,
    lora: LoraConfig | None = None,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
    seed: int = 0,
    config_overrides: dict | None = None,
    revision: str | None = None,
) -> LlamaForCausalLM:
    """Loads a LLaMA-family HF checkpoint (local dir or hub repo id) as an NNX model.

    `dtype` is the compute dtype, `param_dtype` the base storage dtype (default: `dtype`);
    adapters (when `lora` is given) are freshly initialised from `seed` (B = 0, so the loaded
    model's outputs are unchanged).
    """
    from almol_jax.model.hf_weights import load_hf_params, resolve_checkpoint_dir

    ckpt_dir = resolve_checkpoint_dir(path_or_repo_id, revision=revision)
    overrides = dict(dtype=dtype, param_dtype=param_dtype or dtype, **(config_overrides or {}))
    config = ModelConfig.from_hf_config(ckpt_dir / "config.json", **overrides)
    graphdef, abstract = abstract_model(config, lora=lora)
    params = load_hf_params(ckpt_dir, config, abstract, mesh=mesh, rules=rules)
    rest = init_state(
        config,
        lora=lora,
        key=jax.random.key(seed),
        mesh=mesh,
        rules=rules,
        only="non_param",
    )
    return nnx.merge(graphdef, params, rest)
