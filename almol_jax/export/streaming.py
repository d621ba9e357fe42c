"""Streaming safetensors writer: shards planned from shapes, tensors written one at a time.

The safetensors format is an 8-byte little-endian header length, a JSON header (name ->
dtype, shape, data_offsets; plus "__metadata__"), padded with spaces to a multiple of 8, then
the raw little-endian tensor bytes back to back. Because every tensor's shape and dtype is known
before any of its values are (jax arrays carry both), the header of a shard is written first and
each tensor is then fetched, converted and appended on its own: host memory stays near one
tensor's size, never a whole shard's. Only the writing process touches the disk; the fetch
callables still run on every process (multi-host gathers are collectives).
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

# numpy dtype name -> safetensors dtype tag.
_SAFETENSORS_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}
_NUMPY_DTYPES = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
SAFE_WEIGHTS_NAME = "model.safetensors"


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of an export dtype name (bfloat16, float16, float32)."""
    if name not in _NUMPY_DTYPES:
        raise ValueError(f"dtype={name!r} is not one of {sorted(_NUMPY_DTYPES)}")
    return _NUMPY_DTYPES[name]


def parse_size(size: int | str) -> int:
    """Bytes in a size like transformers' max_shard_size: 5GB = 5e9, 5GiB = 5*2**30, or an int."""
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"max_shard_size={size!r} must be positive")
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(size).upper())
    if match is None:
        raise ValueError(f"max_shard_size={size!r} is not a size like '5GB', '500MB' or 1000000")
    number, unit = float(match.group(1)), match.group(2)
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
    units.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})
    units.update({"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12})
    if unit not in units:
        raise ValueError(f"max_shard_size={size!r} has an unknown unit {unit!r}")
    value = int(number * units[unit])
    if value <= 0:
        raise ValueError(f"max_shard_size={size!r} must be positive")
    return value


@dataclass(frozen=True)
class TensorSpec:
    """One tensor to write: its file name, final shape and dtype, and how to get its values.

    `fetch()` returns a host numpy array of exactly `shape` (any dtype; it is cast to `dtype`),
    or None on processes that do not write (after taking part in any collective gather).
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fetch: Callable[[], np.ndarray | None]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def plan_shards(specs: Sequence[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Greedy shard split in the given order, like transformers: a tensor larger than the limit
    gets a shard of its own."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards if shards[0] else []


def _header_bytes(specs: Sequence[TensorSpec], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for spec in specs:
        tag = _SAFETENSORS_DTYPES.get(np.dtype(spec.dtype).name)
        if tag is None:
            raise ValueError(f"tensor {spec.name!r} has dtype={spec.dtype} with no safetensors tag")
        header[spec.name] = {
            "dtype": tag,
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _as_bytes_view(array: np.ndarray) -> memoryview:
    """A byte view of a C-contiguous little-endian array (bf16 has no buffer format of its own)."""
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.byteswap().view(array.dtype.newbyteorder("<"))
    return memoryview(array.reshape(-1).view(np.uint8))


def write_safetensors_file(
    path: str | os.PathLike,
    specs: Sequence[TensorSpec],
    *,
    metadata: dict[str, str] | None = None,
    write: bool = True,
) -> None:
    """Writes one safetensors file, fetching tensors one by one (every process calls fetch)."""
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"duplicate tensor names {duplicates}")
    handle = open(path, "wb") if write else None  # noqa: SIM115 (closed below)
    try:
        if handle is not None:
            handle.write(_header_bytes(specs, metadata or {"format": "pt"}))
            handle.flush()
        for spec in specs:
            values = spec.fetch()
            if handle is None:
                continue
            if values is None:
                raise ValueError(f"tensor {spec.name!r}: fetch() returned None on the writer")
            values = np.asarray(values)
            if tuple(values.shape) != tuple(spec.shape):
                raise ValueError(
                    f"tensor {spec.name!r}: fetched shape {values.shape} != planned {spec.shape}"
                )
            handle.write(_as_bytes_view(values.astype(spec.dtype, copy=False)))
            handle.flush()  # hand each tensor to the OS before fetching the next
            del values
    finally:
        if handle is not None:
            handle.close()


def write_sharded_safetensors(
    out_dir: str | os.PathLike,
    specs: Iterable[TensorSpec],
    *,
    max_shard_size: int | str = "5GB",
    weights_name: str = SAFE_WEIGHTS_NAME,
    write_index: bool = True,
    is_writer: bool = True,
) -> dict[str, str]:
    """Writes specs as safetensors shards named like transformers' save_pretrained.

    One shard is `model.safetensors`; several are `model-0000i-of-0000n.safetensors`. With
    `write_index` the index `model.safetensors.index.json` (metadata.total_size, weight_map) is
    written as well (also for one shard: transformers reads the single file first and ignores
    the index then; other loaders find the index). Returns the weight map (name -> file).
    """
    specs = list(specs)
    shards = plan_shards(specs, parse_size(max_shard_size))
    if not shards:
        raise ValueError("no tensors to export")
    out_dir = Path(out_dir)
    stem, suffix = weights_name.rsplit(".", 1)
    weight_map: dict[str, str] = {}
    for index, shard in enumerate(shards, start=1):
        filename = (
            weights_name
            if len(shards) == 1
            else f"{stem}-{index:05d}-of-{len(shards):05d}.{suffix}"
        )
        write_safetensors_file(out_dir / filename, shard, write=is_writer)
        weight_map.update({spec.name: filename for spec in shard})
    if write_index and is_writer:
        index_doc = {
            "metadata": {"total_size": sum(spec.nbytes for spec in specs)},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (out_dir / f"{weights_name}.index.json").write_text(json.dumps(index_doc, indent=2) + "\n")
    return weight_map
