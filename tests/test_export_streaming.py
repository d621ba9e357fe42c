"""The streaming safetensors writer: read back by the safetensors library, sharding, streaming."""

from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np
import pytest

from almol_jax.export.streaming import (
    TensorSpec,
    numpy_dtype,
    parse_size,
    plan_shards,
    write_safetensors_file,
    write_sharded_safetensors,
)


def _spec(name, array, dtype=None):
    return TensorSpec(name, array.shape, np.dtype(dtype or array.dtype), lambda: array)


@pytest.mark.parametrize(
    ("size", "expected"),
    [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("2GiB", 2 * 2**30), ("1.5KB", 1500), (1000, 1000)],
)
def test_parse_size_follows_transformers_units(size, expected):
    assert parse_size(size) == expected


@pytest.mark.parametrize("size", ["5XB", "GB", 0, "0MB"])
def test_parse_size_rejects_bad_sizes_by_name(size):
    with pytest.raises(ValueError, match="max_shard_size"):
        parse_size(size)


def test_file_reads_back_exactly_with_the_safetensors_library(tmp_path):
    from safetensors.numpy import load_file

    rng = np.random.default_rng(0)
    arrays = {
        "f32": rng.normal(size=(3, 5)).astype(np.float32),
        "bf16": rng.normal(size=(7,)).astype(ml_dtypes.bfloat16),
        "f16": rng.normal(size=(2, 3, 4)).astype(np.float16),
        "i32": rng.integers(-9, 9, size=(4,)).astype(np.int32),
        "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0, 3), np.float32),
    }
    path = tmp_path / "x.safetensors"
    write_safetensors_file(path, [_spec(k, v) for k, v in arrays.items()])
    loaded = load_file(path)
    assert set(loaded) == set(arrays)
    for name, array in arrays.items():
        assert loaded[name].shape == array.shape
        np.testing.assert_array_equal(
            loaded[name].reshape(-1).view(np.uint8), array.reshape(-1).view(np.uint8)
        )
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert header_len % 8 == 0
    payload = sum(a.nbytes for a in arrays.values())
    assert path.stat().st_size == 8 + header_len + payload


def test_tensors_are_cast_to_the_export_dtype(tmp_path):
    import torch
    from safetensors.torch import load_file

    values = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4) + np.float32(1e-3)
    path = tmp_path / "x.safetensors"
    write_safetensors_file(path, [_spec("w", values, numpy_dtype("bfloat16"))])
    loaded = load_file(path)["w"]
    assert loaded.dtype == torch.bfloat16
    expected = torch.from_numpy(values).to(torch.bfloat16)  # torch's own rounding
    assert torch.equal(loaded, expected)


def test_each_tensor_is_fetched_after_the_previous_one_was_written(tmp_path):
    path = tmp_path / "x.safetensors"
    sizes_at_fetch = []

    def fetcher(array):
        def fetch():
            sizes_at_fetch.append(path.stat().st_size)
            return array

        return fetch

    arrays = [np.full((100,), i, np.float32) for i in range(4)]
    specs = [TensorSpec(f"t{i}", a.shape, a.dtype, fetcher(a)) for i, a in enumerate(arrays)]
    write_safetensors_file(path, specs)
    header = 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert sizes_at_fetch == [header + 400 * i for i in range(4)]


def test_shards_split_greedily_and_oversized_tensors_stand_alone():
    sizes = [40, 40, 30, 200, 10]  # bytes as float32 counts / 4
    specs = [
        TensorSpec(f"t{i}", (n // 4,), np.dtype(np.float32), lambda: None)
        for i, n in enumerate(sizes)
    ]
    shards = plan_shards(specs, 100)
    assert [[s.name for s in shard] for shard in shards] == [
        ["t0", "t1"],
        ["t2"],
        ["t3"],
        ["t4"],
    ]


def test_sharded_files_and_index_load_with_transformers_conventions(tmp_path):
    from safetensors.numpy import load_file

    rng = np.random.default_rng(1)
    arrays = {f"layer.{i}.weight": rng.normal(size=(16, 16)).astype(np.float32) for i in range(5)}
    weight_map = write_sharded_safetensors(
        tmp_path, [_spec(k, v) for k, v in arrays.items()], max_shard_size=2100
    )
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == weight_map
    assert index["metadata"]["total_size"] == 5 * 16 * 16 * 4
    files = sorted(set(weight_map.values()))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    for name, array in arrays.items():
        np.testing.assert_array_equal(load_file(tmp_path / weight_map[name])[name], array)


def test_boundary_errors_name_the_tensor(tmp_path):
    a = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match=r"duplicate tensor names \['w'\]"):
        write_safetensors_file(tmp_path / "a.safetensors", [_spec("w", a), _spec("w", a)])
    wrong = TensorSpec("w", (3, 2), np.dtype(np.float32), lambda: a)
    with pytest.raises(ValueError, match=r"'w': fetched shape \(2, 2\) != planned \(3, 2\)"):
        write_safetensors_file(tmp_path / "b.safetensors", [wrong])
    with pytest.raises(ValueError, match="dtype='int4'"):
        numpy_dtype("int4")


def test_non_writing_processes_fetch_everything_and_write_nothing(tmp_path):
    calls = []
    specs = [
        TensorSpec(f"t{i}", (2,), np.dtype(np.float32), lambda i=i: calls.append(i))
        for i in range(3)
    ]
    write_sharded_safetensors(tmp_path, specs, max_shard_size=8, is_writer=False)
    assert calls == [0, 1, 2]  # every collective gather still runs, in order
    assert list(tmp_path.iterdir()) == []
