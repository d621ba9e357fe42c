"""Host memory of the streaming export, measured by bench/export_memory.py in a subprocess.

Exporting a ~128 MB model (merged, fp32) must grow the RSS by about one tensor: at least half
the largest tensor (the 33.5 MB embedding, so the sampler does see the transient tensor; a
measurement blind to it would fail) and at most 1.5x it + 16 MB, far below the model's size
(the naive gather-everything export grows it by ~110 MB, see docs/export.md).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "export_memory.py"


@pytest.mark.slow
def test_merged_export_peak_rss_stays_near_one_tensor():
    pytest.importorskip(
        "psutil",
        reason="psutil is a test-only dependency (requirements-dev.txt), not installed here",
    )
    spec = importlib.util.spec_from_file_location("export_memory", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--hidden", "512", "--mlp", "1376", "--layers", "4", "--vocab", "16384"]
    (merged,) = bench.main([*argv, "--max-shard-size", "20MB", "--modes", "merged"])
    largest = merged["largest_tensor_mb"]
    assert merged["written_mb"] > 100 and merged["model_mb"] > 3 * largest  # all of it written
    assert 0.5 * largest < merged["growth_mb"] < 1.5 * largest + 16, merged
