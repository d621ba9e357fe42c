"""Hugging Face safetensors <-> our parameter layout, tensor by tensor, placed on its sharding.

Name mapping (ours -> HF; kernels are stored [in, out] here and [out, in] by HF):
  model.embed_tokens.embedding [Vp, D]      <- model.embed_tokens.weight [V, D]   (vocab padded)
  model.layers.{i}.*.{q,k,v,o,gate,up,down}_proj.kernel <- ....weight, transposed
  model.layers.{i}.*_proj.bias              <- ....bias
  model.layers.{i}.{input,post_attention}_layernorm.scale, model.norm.scale <- ....weight
  lm_head.kernel [D, Vp]                    <- lm_head.weight [V, D], transposed (absent if tied)
PEFT adapters: ...{name}.lora_a [in, R] <-> base_model.model.{...}.{name}.lora_A.weight [R, in],
               ...{name}.lora_b [R, out] <-> base_model.model.{...}.{name}.lora_B.weight [out, R].
Each tensor is read alone (safe_open), transposed, padded, cast and `jax.device_put` on its
NamedSharding, so a 7B model never needs two full host copies. Only safetensors files are read
(never a PyTorch pickle); where a source path or Hub id points is almol_jax/hub.py's rule.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from safetensors import safe_open

from almol_jax.errors import UserError
from almol_jax.hub import resolve_dir
from almol_jax.model.config import ModelConfig
from almol_jax.model.lora import LoRAParam
from almol_jax.model.lora_config import PEFT_LINEAR_NAMES, LoraConfig
from almol_jax.sharding import Rules, logical_sharding, variable_names

_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
HUB_PATTERNS = ("*.json", "*.safetensors")  # what a Hub download fetches: never pickles
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclasses.dataclass(frozen=True)
class HFName:
    """Where one of our variables lives in a HF/PEFT checkpoint and how to convert it."""

    key: str  # HF tensor name
    transpose: bool  # HF stores the transpose of ours
    vocab_axis: int | None  # our axis padded to padded_vocab_size (None: not a vocab tensor)


def _path_str(path) -> tuple[str, ...]:
    return tuple(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)


def hf_name(path) -> HFName:
    """Maps our variable path (tuple or "a.b.c") to its HF tensor name; ValueError if none."""
    parts = tuple(path.split(".")) if isinstance(path, str) else _path_str(path)
    dotted = ".".join(parts)
    leaf, prefix = parts[-1], ".".join(parts[:-1])
    if parts == ("lm_head", "kernel"):
        return HFName("lm_head.weight", True, 1)
    if parts == ("model", "embed_tokens", "embedding"):
        return HFName("model.embed_tokens.weight", False, 0)
    if leaf == "kernel":
        return HFName(f"{prefix}.weight", True, None)
    if leaf == "bias":
        return HFName(f"{prefix}.bias", False, None)
    if leaf == "scale":
        return HFName(f"{prefix}.weight", False, None)
    if leaf == "lora_a":
        return HFName(f"base_model.model.{prefix}.lora_A.weight", True, None)
    if leaf == "lora_b":
        return HFName(f"base_model.model.{prefix}.lora_B.weight", True, None)
    raise ValueError(f"variable {dotted} has no Hugging Face name")


def to_hf_tensor(path, value, config: ModelConfig) -> tuple[str, np.ndarray]:
    """(HF key, host array in HF layout) for one of our variables: vocab padding cut, transposed."""
    name = hf_name(path)
    arr = np.asarray(jax.device_get(value))
    if name.vocab_axis is not None:
        arr = np.take(arr, np.arange(config.vocab_size), axis=name.vocab_axis)
    # contiguous: safetensors' numpy writer stores the raw buffer of a transposed view
    return name.key, np.ascontiguousarray(arr.T if name.transpose else arr)


def resolve_checkpoint_dir(
    path_or_repo_id: str | os.PathLike, revision: str | None = None, *, key: str = "model.source"
) -> Path:
    """A local directory as is; an `owner/name` Hub id fetched (config and safetensors files
    only) when not offline; anything else a UserError naming it (almol_jax/hub.py's rule)."""
    ckpt_dir = resolve_dir(path_or_repo_id, key, HUB_PATTERNS, revision)
    if not (ckpt_dir / "config.json").is_file():
        raise UserError(f"{key}={os.fspath(path_or_repo_id)!r} holds no config.json")
    return ckpt_dir


def weight_files(ckpt_dir: Path, stem: str = "model") -> dict[str, Path]:
    """{tensor key: file} from `<stem>.safetensors` or `<stem>.safetensors.index.json`.

    Only safetensors are read (a pickle file can run code when it is loaded): a directory with
    only PyTorch `.bin` / `.pt` weights is a UserError saying so."""
    index = ckpt_dir / f"{stem}.safetensors.index.json"
    single = ckpt_dir / f"{stem}.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"{index} is not a safetensors index ({err!r})") from None
        return {k: ckpt_dir / f for k, f in weight_map.items()}
    if single.is_file():
        with safe_open(single, framework="numpy") as f:
            return dict.fromkeys(f.keys(), single)
    pickled = sorted(p.name for p in ckpt_dir.glob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise UserError(
            f"{ckpt_dir} holds only PyTorch pickle weights ({', '.join(pickled)}); almol_jax "
            f"reads safetensors only (a pickle can run code when loaded): convert them to "
            f"{single.name} first"
        )
    raise UserError(f"no {single.name} or {index.name} in {ckpt_dir} (only safetensors load)")


class _Reader:
    """Opens each safetensors file once; reads one tensor at a time."""

    def __init__(self, files: dict[str, Path]):
        self.files = files
        self._handles: dict[Path, object] = {}

    def _handle(self, key):
        file = self.files[key]
        if file not in self._handles:
            self._handles[file] = safe_open(file, framework="numpy")
        return self._handles[file]

    def shape(self, key) -> tuple[int, ...]:
        return tuple(self._handle(key).get_slice(key).get_shape())

    def read(self, key) -> np.ndarray:
        return self._handle(key).get_tensor(key)


def _expected_hf_shape(name: HFName, shape, config: ModelConfig) -> tuple[int, ...]:
    shape = list(shape)
    if name.vocab_axis is not None:
        shape[name.vocab_axis] = config.vocab_size
    return tuple(reversed(shape)) if name.transpose else tuple(shape)


def _load_into(
    state: nnx.State,
    reader: _Reader,
    config: ModelConfig,
    *,
    mesh: Mesh | None,
    rules: Rules | None,
    source: str,
    ignore=lambda key: False,
) -> nnx.State:
    """Fills every variable of abstract `state` from `reader`; checks all keys before reading."""
    flat = list(nnx.to_flat_state(state))
    names = {path: hf_name(path) for path, _ in flat}
    wanted = {n.key for n in names.values()}
    missing = sorted(wanted - set(reader.files))
    if missing:
        raise KeyError(f"{source} lacks {len(missing)} expected tensor(s): {missing[:10]}")
    unexpected = sorted(
        k for k in set(reader.files) - wanted if not k.endswith(_IGNORED_SUFFIXES) and not ignore(k)
    )
    if unexpected:
        raise KeyError(f"{source} has {len(unexpected)} unexpected tensor(s): {unexpected[:10]}")
    for path, var in flat:
        name = names[path]
        expect = _expected_hf_shape(name, var.shape, config)
        got = reader.shape(name.key)
        if got != expect:
            raise ValueError(f"{source}: tensor {name.key} has shape {got}, expected {expect}")
    out = []
    for path, var in flat:
        name = names[path]
        arr = reader.read(name.key)
        if name.transpose:
            arr = arr.T
        if name.vocab_axis is not None:
            pad = [(0, 0)] * arr.ndim
            pad[name.vocab_axis] = (0, var.shape[name.vocab_axis] - arr.shape[name.vocab_axis])
            arr = np.pad(arr, pad)
        arr = np.ascontiguousarray(arr.astype(var.dtype))
        if mesh is None:
            value = jax.device_put(arr)
        else:
            value = jax.device_put(arr, logical_sharding(variable_names(var), mesh, rules))
        del arr
        out.append((path, var.replace(value)))
    return nnx.from_flat_state(out)


def load_hf_params(
    ckpt_dir: Path,
    config: ModelConfig,
    abstract_state: nnx.State,
    *,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
) -> nnx.State:
    """The nnx.Param state of the model read from `ckpt_dir` (see the module docstring)."""
    params = nnx.filter_state(abstract_state, nnx.Param)
    reader = _Reader(weight_files(Path(ckpt_dir)))
    tied_extra = lambda k: config.tie_word_embeddings and k == "lm_head.weight"
    return _load_into(
        params, reader, config, mesh=mesh, rules=rules, source=str(ckpt_dir), ignore=tied_extra
    )


# adapter_config.json fields whose non-default values change what the adapter computes, which our
# plain LoRA (one rank and scale for every target, no DoRA, no extra trained modules) cannot honour
_UNSUPPORTED_PEFT_FIELDS = {
    "use_dora": (False, None),
    "fan_in_fan_out": (False, None),
    "bias": ("none", None),
    "lora_bias": (False, None),
    "modules_to_save": (None, []),
    "rank_pattern": ({}, None),
    "alpha_pattern": ({}, None),
    "layers_to_transform": (None, []),
    "layer_replication": (None, []),
    "target_parameters": (None, []),
    "trainable_token_indices": (None, [], {}),
}


def check_adapter_config(adapter_dir: str | os.PathLike) -> dict:
    """The adapter_config.json of a LoRA adapter we can load; ValueError naming what is not."""
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise ValueError(f"{str(adapter_dir)!r} has no adapter_config.json (not a PEFT adapter)")
    config = json.loads(path.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{path}: peft_type={config.get('peft_type')!r}; only LORA loads")
    for key, allowed in _UNSUPPORTED_PEFT_FIELDS.items():
        if key in config and config[key] not in allowed:
            raise ValueError(
                f"{path}: {key}={config[key]!r} is not supported (expected {allowed[0]!r})"
            )
    return config


def read_peft_config(adapter_dir: str | os.PathLike) -> LoraConfig:
    """LoraConfig from a PEFT adapter_config.json (check_adapter_config first)."""
    cfg = check_adapter_config(adapter_dir)
    targets = cfg.get("target_modules") or "all-linear"
    if isinstance(targets, list):  # PEFT may save module paths: keep the projection names
        names = {t.rsplit(".", 1)[-1] for t in targets}
        targets = "all-linear" if names == set(PEFT_LINEAR_NAMES) else tuple(sorted(names))
    return LoraConfig(
        r=int(cfg["r"]),
        alpha=float(cfg["lora_alpha"]),
        dropout=float(cfg.get("lora_dropout") or 0.0),
        target_modules=targets,
        use_rslora=bool(cfg.get("use_rslora", False)),
    )


def load_peft_adapter(model: nnx.Module, adapter_dir: str | os.PathLike) -> nnx.Module:
    """Copies a PEFT LoRA adapter (adapter_model.safetensors) into `model`'s LoRAParams in place.

    The model must have been built with a LoraConfig of the same rank, scale and targets; an
    adapter_config.json using a PEFT feature we cannot honour (DoRA, rank/alpha patterns,
    modules_to_save, trained biases, fan_in_fan_out...) is a ValueError naming the field.
    """
    adapter_dir = Path(adapter_dir)
    peft = read_peft_config(adapter_dir)
    ours = model.lora_config
    if ours is None:
        raise ValueError("model has no LoRA adapters; build it with lora=read_peft_config(dir)")
    if (ours.r, ours.scale) != (peft.r, peft.scale):
        raise ValueError(
            f"adapter in {adapter_dir} has r={peft.r}, scale={peft.scale}; "
            f"model has r={ours.r}, scale={ours.scale}"
        )
    state = nnx.state(model, LoRAParam)
    reader = _Reader(weight_files(adapter_dir, "adapter_model"))
    loaded = _load_into(
        state,
        reader,
        model.config,
        mesh=None,
        rules=None,
        source=str(adapter_dir / "adapter_model.safetensors"),
    )

    def place(new, old):
        return jax.device_put(new.astype(old.dtype), old.sharding)

    nnx.update(model, jax.tree.map(place, loaded, state))
    return model
