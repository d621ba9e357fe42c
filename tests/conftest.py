"""Shared pytest fixtures: CPU-only JAX, paths to ../shared/data (skipped when absent)."""

import gc
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only ../shared/data folder; tests that need it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (only the project's own machines have it)")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_programs():
    """One pytest process runs the whole suite; without this it keeps every program it ever
    compiled (XLA executables, tracing caches) until it exits. Each test module's are dropped
    when the module ends, so the process's memory stays near one module's."""
    yield
    if "jax" in sys.modules:
        sys.modules["jax"].clear_caches()
    gc.collect()
