"""Small runs compiled ahead of time for TPU / GPU targets (bench/aot_compile.py's Programs):
the tiny config's model on a target's compile-only devices. Needs requirements-aot.txt (libtpu,
the CUDA plugin), which scripts/setup_test_env.sh installs: a missing one fails, never skips."""

from __future__ import annotations

import math
import re

from bench.aot_compile import Programs, run_config
from bench.aot_targets import TARGETS, target_devices

TINY = "configs/tiny.yaml"
FSDP = ["mesh.data=1", "mesh.fsdp=-1", "mesh.tensor=1"]
SMALL_BF16 = [
    "model.dtype=bfloat16",
    "model.overrides.hidden_size=256",
    "model.overrides.intermediate_size=1024",
    "model.overrides.num_hidden_layers=2",
    "lora.enabled=true",
    "lora.r=8",
]
_ALL_REDUCE = re.compile(r"=\s*(.*?)\s+all-reduce(?:-start)?\(")
_SHAPE = re.compile(r"[a-z0-9]+\[([0-9,]*)\]")


def programs(target: str, overrides: list[str], **kwargs) -> Programs:
    """The tiny config with `overrides`, placed on `target`'s devices."""
    cfg = run_config(TINY, [*FSDP, *overrides])
    return Programs(cfg, target_devices(TARGETS[target]), **kwargs)


def all_reduces_at_least(hlo_text: str, elements: int) -> list[str]:
    """The all-reduce instructions of compiled HLO with a result of >= `elements` elements."""
    found = []
    for line in hlo_text.splitlines():
        match = _ALL_REDUCE.search(line)
        if not match:
            continue
        sizes = [
            math.prod(int(d) for d in dims.split(",") if d)
            for dims in _SHAPE.findall(match.group(1))
        ]
        if max(sizes, default=0) >= elements:
            found.append(line.strip()[:200])
    return found
