"""What a checkpoint's trainables depend on, as a flat {dotted key: value} record, and its check.

Every checkpoint records `run_fingerprint(cfg)` in its meta. The keys:
  model.<field>   the network's ModelConfig (shapes, rope, ids, param_dtype; not how it computes:
                  dtype, kernels, attention_impl, remat)
  base.*          which base weights: base.source (absolute path or Hub id) with the sha256 of
                  its config.json (base.config_sha256) and of its tensors' names, dtypes and
                  shapes (base.weights_sha256: the safetensors headers); for a random-init base
                  base.preset and base.seed (the "params" key is drawn from the seed)
  tokenizer.*     kind, path and the sha256 of its files (tokenizer.sha256)
  lora.*          the LoRA section
  objective.*     the objective section
Resuming compares the run's config with the newest checkpoint's record (`check_resume`) before
anything in the run directory is written; restoring for inference compares the base keys
(`check_base`). A difference is a RunDirectoryError naming each differing key, old -> new.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

from almol_jax.run.locate import RunDirectoryError

FINGERPRINT = "fingerprint"  # the meta key
COMPUTE_ONLY = ("dtype", "kernels", "attention_impl", "remat")  # ModelConfig: not the weights
BASE_PREFIXES = ("model.", "base.")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(value: Any) -> Any:
    """JSON's view of a value (tuples as lists), so a record read back compares equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def safetensors_header(path: Path) -> dict[str, Any]:
    """{tensor name: [dtype, shape]} of a safetensors file, read from its header alone."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return {k: [v["dtype"], v["shape"]] for k, v in header.items() if k != "__metadata__"}


def base_identity(source: str | os.PathLike) -> dict[str, Any]:
    """base.source / base.config_sha256 / base.weights_sha256 of an HF base (see the docstring)."""
    from almol_jax.hub import hub_id
    from almol_jax.model.hf_weights import resolve_checkpoint_dir, weight_files

    ckpt_dir = resolve_checkpoint_dir(source)
    text = os.fspath(source)
    where = text if hub_id(text) and not Path(text).exists() else str(ckpt_dir.resolve())
    headers: dict[str, Any] = {}
    for path in sorted(set(weight_files(ckpt_dir).values())):
        headers.update(safetensors_header(path))
    return {
        "base.source": where,
        "base.config_sha256": _sha256((ckpt_dir / "config.json").read_bytes()),
        "base.weights_sha256": _sha256(json.dumps(headers, sort_keys=True).encode()),
    }


def tokenizer_identity(tok) -> dict[str, Any]:
    """tokenizer.kind / tokenizer.path / tokenizer.sha256 of a TokenizerSection."""
    from almol_jax.data.tokenizer import BYTE_VOCAB_SIZE, TOKENIZER_FILES, tokenizer_dir

    out: dict[str, Any] = {"tokenizer.kind": tok.kind, "tokenizer.path": tok.path}
    if tok.kind == "byte":
        digest = _sha256(f"byte:{BYTE_VOCAB_SIZE}".encode())
    elif tok.kind == "sentencepiece":
        model_file = Path(str(tok.path)).expanduser()
        model_file = model_file / "tokenizer.model" if model_file.is_dir() else model_file
        digest = _sha256(model_file.read_bytes()) if model_file.is_file() else None
    else:
        directory = tokenizer_dir(tok.path)
        h = hashlib.sha256()
        for name in TOKENIZER_FILES:
            if (directory / name).is_file():
                h.update(name.encode() + b"\0" + (directory / name).read_bytes() + b"\0")
        digest = h.hexdigest()
    out["tokenizer.sha256"] = digest
    return out


def base_fingerprint(cfg) -> dict[str, Any]:
    """The model.* and base.* keys of a run's fingerprint: the network its trainables fit."""
    from almol_jax.run.setup import model_config

    mc = dataclasses.asdict(model_config(cfg))
    out: dict[str, Any] = {f"model.{k}": v for k, v in mc.items() if k not in COMPUTE_ONLY}
    if cfg.model.source is None:
        out.update({"base.preset": cfg.model.preset, "base.seed": cfg.seed})
    else:
        out.update(base_identity(cfg.model.source))
    return _canonical(out)


def run_fingerprint(cfg) -> dict[str, Any]:
    """The flat fingerprint of what a run's trainables depend on (see the module docstring)."""
    from almol_jax.config import config_to_dict

    out = base_fingerprint(cfg)
    out.update(tokenizer_identity(cfg.tokenizer))
    for section in ("lora", "objective"):
        out.update({f"{section}.{k}": v for k, v in config_to_dict(getattr(cfg, section)).items()})
    return _canonical(out)


def differences(old: dict[str, Any], new: dict[str, Any], prefixes=None) -> list[str]:
    """'key: old -> new' for each key (under `prefixes`, when given) whose values differ."""
    keys = sorted(set(old) | set(new))
    if prefixes is not None:
        keys = [k for k in keys if k.startswith(tuple(prefixes))]
    missing = "<absent>"
    return [
        f"{k}: {old.get(k, missing)!r} -> {new.get(k, missing)!r}"
        for k in keys
        if old.get(k, missing) != new.get(k, missing)
    ]


def check_resume(run_dir: Path, step: int, recorded: dict | None, current: dict) -> None:
    """RunDirectoryError when checkpoint `step` of `run_dir` was trained on something else than
    the config now asks for (a checkpoint without a record, from before fingerprints, passes)."""
    if recorded is None:
        return
    diff = differences(recorded, current)
    if diff:
        raise RunDirectoryError(
            f"cannot resume {str(run_dir)!r}: its checkpoint {step} was trained with another "
            f"model, tokenizer, LoRA or objective ({'; '.join(diff)}). Nothing in the run "
            "directory was changed. To start a new run, give another output_dir (or "
            "checkpoint.resume=false to train afresh in this one); to continue this run, "
            "restore those keys."
        )


def check_base(run_dir: Path, step: int, recorded: dict | None, current: dict) -> None:
    """RunDirectoryError when the base the run's config now builds is not the one checkpoint
    `step`'s trainables were trained on (model.* and base.* keys)."""
    if recorded is None:
        return
    diff = differences(recorded, current, BASE_PREFIXES)
    if diff:
        raise RunDirectoryError(
            f"checkpoint {step} of {str(run_dir)!r} was trained on another base than its config "
            f"now builds ({'; '.join(diff)}); refusing to load its trainables onto it "
            "(--allow-other-base / allow_other_base=True loads them anyway)"
        )
