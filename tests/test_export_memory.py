"""Host memory of the streaming export, measured by bench/export_memory.py in subprocesses.

The merged export of a ~128 MB model must grow the RSS by at most about one tensor (the largest
is the 33.5 MB embedding), while the naive gather-everything export, measured the same way, grows
it by most of the model: the check that the measurement can see a whole-model copy.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "export_memory.py"


@pytest.mark.slow
def test_merged_export_peak_rss_stays_near_one_tensor():
    pytest.importorskip("psutil")
    spec = importlib.util.spec_from_file_location("export_memory", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--hidden", "512", "--mlp", "1376", "--layers", "4", "--vocab", "16384"]
    argv += ["--max-shard-size", "20MB", "--modes", "merged,naive"]
    merged, naive = bench.main(argv)
    assert merged["written_mb"] > 100  # the whole model was written
    assert merged["growth_mb"] < 1.5 * merged["largest_tensor_mb"] + 16, merged
    assert naive["growth_mb"] > 0.75 * naive["written_mb"], naive
