"""ModelConfig: the LLaMA-family architecture as Hugging Face's LlamaConfig describes it.

Reads both config.json layouts (transformers <5: `rope_theta` + `rope_scaling`; transformers 5:
a `rope_parameters` dict holding `rope_type`, `rope_theta` and the scaling keys), writes the
transformers-5 layout back, and names a few presets. Derived sizes (head_dim, padded vocab) are
computed from the config, never read off kernel shapes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from almol_jax.model.kernels import ATTENTION_IMPLS, KERNEL_SETS

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_ROPE_TYPES = ("default", "linear", "llama3")
# per-block rematerialisation: name -> jax.checkpoint policy (None: save nothing); "none" = off.
# "offload": like "full", but each block's input (named BLOCK_INPUT in model/llama.py) is kept
# in the host's pinned memory instead of the device's (TPU/GPU; MaxText's `remat_policy: offload`)
BLOCK_INPUT = "block_input"
REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "offload": jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[],
        names_which_can_be_offloaded=[BLOCK_INPUT],
        offload_src="device",
        offload_dst="pinned_host",
    ),
}
REMAT_NAMES = ("none", *REMAT_POLICIES)


def dtype_of(name: str):
    """Maps a dtype name ("float32", "bfloat16", "float16") to the jnp dtype; ValueError names it."""
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[name]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and numerics of a LLaMA-family causal LM (field names follow LlamaConfig)."""

    vocab_size: int = 512  # true vocabulary (tokenizer size); padded up for sharding
    hidden_size: int = 64  # D
    intermediate_size: int = 172  # F (SwiGLU)
    num_hidden_layers: int = 2  # L
    num_attention_heads: int = 4  # N
    num_key_value_heads: int | None = None  # K (None: = N, i.e. MHA; 1: MQA)
    head_dim: int | None = None  # H (None: hidden_size // num_attention_heads)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # HF format: {"rope_type": "linear"|"llama3", "factor": ...}
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None
    initializer_range: float = 0.02
    vocab_multiple: int = 128  # pad the vocabulary axis to a multiple of this (1: no padding)
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"  # storage dtype of the base parameters
    # kernel table (model/kernels.py): auto = cpu on a one-device float32 CPU run, else portable
    kernels: str = "auto"
    attention_impl: str = "auto"  # the portable kernels' attention: auto | xla | cudnn | flash
    remat: str = "none"  # per-block rematerialisation: REMAT_NAMES (dots = dots_saveable)

    def __post_init__(self):
        n_heads = self.num_attention_heads
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", n_heads)
        if self.head_dim is None:
            if self.hidden_size % n_heads:
                raise ValueError(f"{self.hidden_size=} is not divisible by {n_heads=}")
            object.__setattr__(self, "head_dim", self.hidden_size // n_heads)
        rs = self.rope_scaling
        if rs is not None:
            rs = dict(rs)
            rope_type = rs.pop("rope_type", rs.pop("type", "default"))
            rs = None if rope_type in ("default", "none", None) else {"rope_type": rope_type, **rs}
            object.__setattr__(self, "rope_scaling", rs)
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the first inconsistent value."""
        n, k = self.num_attention_heads, self.num_key_value_heads
        if n % k:
            raise ValueError(f"num_attention_heads={n} is not divisible by num_key_value_heads={k}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported (only 'silu')")
        if self.vocab_multiple < 1:
            raise ValueError(f"vocab_multiple={self.vocab_multiple} must be >= 1")
        if self.kernels not in KERNEL_SETS:
            raise ValueError(f"kernels={self.kernels!r} not in {KERNEL_SETS}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl={self.attention_impl!r} not in {ATTENTION_IMPLS}")
        if self.kernels == "cpu" and self.attention_impl not in ("auto", "xla"):
            raise ValueError(
                f"attention_impl={self.attention_impl!r} applies to kernels='portable'; "
                "kernels='cpu' runs its own attention"
            )
        if self.remat not in REMAT_NAMES:
            raise ValueError(f"remat={self.remat!r} not in {REMAT_NAMES}")
        dtype_of(self.dtype)
        dtype_of(self.param_dtype)
        if self.rope_scaling is not None:
            rope_type = self.rope_scaling["rope_type"]
            if rope_type not in _ROPE_TYPES:
                raise ValueError(
                    f"rope_type={rope_type!r} is not supported; expected {_ROPE_TYPES}"
                )
            if "factor" not in self.rope_scaling:
                raise ValueError(f"rope_scaling={self.rope_scaling} lacks 'factor'")

    def __hash__(self):
        fields = dataclasses.astuple(self)
        return hash(
            tuple(json.dumps(f, sort_keys=True) if isinstance(f, dict) else f for f in fields)
        )

    @property
    def padded_vocab_size(self) -> int:
        """Vocabulary rounded up to a multiple of `vocab_multiple` (Vp)."""
        m = self.vocab_multiple
        return -(-self.vocab_size // m) * m

    @property
    def compute_dtype(self):
        return dtype_of(self.dtype)

    @property
    def storage_dtype(self):
        return dtype_of(self.param_dtype)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- Hugging Face config.json
    @classmethod
    def from_hf_config(cls, config: dict | str | Path, **overrides) -> ModelConfig:
        """Builds a ModelConfig from a HF LlamaConfig dict, a config.json path or its directory."""
        if not isinstance(config, dict):
            path = Path(config)
            path = path / "config.json" if path.is_dir() else path
            config = json.loads(path.read_text())
        hf = dict(config)
        model_type = hf.get("model_type", "llama")
        if model_type not in ("llama", "mistral"):
            raise ValueError(f"model_type={model_type!r} is not a LLaMA-family model")
        rope_theta = hf.get("rope_theta")
        rope_scaling = hf.get("rope_scaling")
        rope_parameters = hf.get("rope_parameters")
        if rope_parameters:  # transformers 5 layout
            rp = dict(rope_parameters)
            rope_theta = rp.pop("rope_theta", rope_theta)
            rope_scaling = rp
        kwargs: dict[str, Any] = {}
        names = {f.name for f in dataclasses.fields(cls)}
        for key in names - {"rope_theta", "rope_scaling"}:
            if key in hf and hf[key] is not None:
                kwargs[key] = hf[key]
        if hf.get("head_dim") is None:
            kwargs.pop("head_dim", None)
        if isinstance(kwargs.get("eos_token_id"), list):
            kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
        kwargs.pop("dtype", None)  # HF's dtype is the checkpoint's storage dtype, not ours
        kwargs["rope_theta"] = float(rope_theta if rope_theta is not None else 10000.0)
        kwargs["rope_scaling"] = rope_scaling
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf_config(self) -> dict:
        """A transformers-5 LlamaConfig dict (rope_parameters layout) for this architecture."""
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rope.update(self.rope_scaling)
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": self.hidden_act,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": rope,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "initializer_range": self.initializer_range,
        }

    # ---------------------------------------------------------------- presets
    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        """A named architecture ("tiny", "cpo-small", "cpo-d512", "llama2-7b", "meditron-7b")."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


_LLAMA2_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
    ),
    "cpo-small": dict(
        vocab_size=2048,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        rms_norm_eps=1e-5,
    ),
    "cpo-d512": dict(
        vocab_size=2048,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        rms_norm_eps=1e-5,
    ),
    "llama2-7b": _LLAMA2_7B,
    "meditron-7b": {**_LLAMA2_7B, "vocab_size": 32017},
}
