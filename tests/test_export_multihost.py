"""Multi-host export: two JAX processes (2 CPU devices each, gloo) export a model sharded over all
4 devices; process 0 alone writes, and its files equal a single-process, unsharded export.

The file doubles as the worker: `python tests/test_export_multihost.py PROCESS_ID PORT OUT`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
VOCAB = 300


def _model(mesh=None):
    import jax
    from flax import nnx

    from almol_jax.model import LoraConfig, LoRAParam, ModelConfig, build_model

    config = ModelConfig.preset("tiny", vocab_size=VOCAB)
    model = build_model(config, lora=LoraConfig(r=4, alpha=8.0), rngs=0, mesh=mesh)
    lora = nnx.state(model, LoRAParam)
    # B = 0 at init: shift every adapter (inside jit, so sharded arrays stay sharded).
    nnx.update(model, jax.jit(lambda s: jax.tree.map(lambda x: x + 0.01, s))(lora))
    return model


def _worker(process_id: int, port: int, out: Path) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    from almol_jax.export import export_model
    from almol_jax.sharding import make_mesh

    mesh = make_mesh({"data": 1, "fsdp": 2, "tensor": 2})
    model = _model(mesh)
    kernel = model.model.layers[0].self_attn.q_proj.kernel[...]
    assert not kernel.is_fully_addressable, kernel.sharding  # really spread over both hosts
    target = out / f"process{process_id}"
    export_model(model, target / "merged", format="merged", dtype="float32", max_shard_size="50KB")
    export_model(
        model, target / "peft", format="peft", dtype="float32", base_model_name_or_path="b"
    )
    jax.distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tensors(directory: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


@pytest.mark.slow
def test_two_process_export_writes_once_and_matches_the_unsharded_export(tmp_path):
    from almol_jax.export import export_model

    port = _free_port()
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        PYTHONPATH=str(REPO),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(i), str(port), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    assert not (tmp_path / "process1").exists()  # only process 0 writes
    written = tmp_path / "process0"
    assert len(list((written / "merged").glob("model-*.safetensors"))) > 1

    reference = tmp_path / "reference"
    model = _model()
    export_model(
        model, reference / "merged", format="merged", dtype="float32", max_shard_size="50KB"
    )
    export_model(
        model, reference / "peft", format="peft", dtype="float32", base_model_name_or_path="b"
    )
    for kind in ("merged", "peft"):
        ours, ref = _tensors(written / kind), _tensors(reference / kind)
        assert sorted(ours) == sorted(ref)
        for name in ref:
            np.testing.assert_allclose(ours[name], ref[name], rtol=0, atol=1e-6, err_msg=name)
    assert (written / "merged" / "config.json").read_text() == (
        reference / "merged" / "config.json"
    ).read_text()


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
