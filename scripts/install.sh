#!/usr/bin/env bash
# Installs almol_jax's runtime: WordNet 3.0 from Debian (METEOR), a C++ compiler when there is
# none (the CPU attention kernel is built with it on first use), both skipped when not root or
# not Debian (then METEOR is reported as unavailable and attention falls back to XLA's), and
# the Python requirements. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  if ! dpkg -s wordnet-base wordnet-sense-index >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base wordnet-sense-index >/dev/null
  fi
  if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
  fi
fi
python -m pip install -q -r requirements.txt
