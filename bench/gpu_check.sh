#!/usr/bin/env bash
# The issue-16 GPU check, one command on a machine with NVIDIA GPUs (under 8 minutes on one H200):
#   bash bench/gpu_check.sh [--config CFG] [--json gpu_check.json] [key=value ...]
# Installs the jax CUDA wheels of the installed jax's version (and the AOT plugin pins), measures
# the card's bf16 matmul peak, runs the recipe-shaped LoRA CPO step at the largest micro-batch that
# fits (tokens/s, MFU), greedy decoding at batch 64 (new tokens/s), and loads and runs an
# executable compiled for this card by a CPU-only process (serialize / deserialize_and_load).
# See bench/gpu_check.py for what each figure is.
set -euo pipefail
cd "$(dirname "$0")/.."
JAX_VERSION=$(python -c 'import jax; print(jax.__version__)')
python -m pip install -q "jax[cuda12]==${JAX_VERSION}" -r requirements-aot.txt
python - <<'PY'
import jax
kinds = {d.platform for d in jax.devices()}
if kinds != {"gpu"}:
    raise SystemExit(f"error: no CUDA GPU visible to jax (devices: {jax.devices()})")
print(f"{len(jax.devices())} x {jax.devices()[0].device_kind}")
PY
exec timeout 900 python bench/gpu_check.py "$@"
