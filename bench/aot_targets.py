"""Accelerator targets of bench/aot_compile.py: compile-only TPU and GPU devices on a CPU host.

`TARGETS` names each target (chips, memory per chip, bf16 peak) and `target_devices(name)` returns
its devices from `jax.experimental.topologies.get_topology_desc`: libtpu's topologies for TPUs
(pinned in requirements-aot.txt to the version jax's `tpu` extra names), the CUDA plugin's for
GPUs, described by a GpuTargetConfigProto whose values are XLA's own device specs
(xla/backends/gpu/target_config/specs/{h100_sxm,h200}.txtpb in openxla/xla). Nothing runs on those
devices: programs are lowered and compiled for them, and `compiled.memory_analysis()` reports
their per-device memory. A TPU program that does not fit fails to compile (RESOURCE_EXHAUSTED);
a GPU compile does not check memory, the caller compares with `hbm_gib`.

Peaks are the vendors' dense bf16 figures per chip (TPU v4 275, v5e 197, v5p 459, v6e 918
TFLOP/s; H100 SXM and H200 989 TFLOP/s). Memory: TPU HBM per chip as the compiler counts it for
v5e (15.75 GiB), nominal for the others; GPU the spec's device_memory_size.
"""

from __future__ import annotations

import dataclasses
import os

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Target:
    """One slice or GPU machine: how to get its topology, its chips' memory and bf16 peak."""

    name: str
    platform: str  # "tpu" | "gpu"
    topology: str  # TPU topology name, or the GPU topology "hosts x procs x devices"
    chips: int
    hbm_gib: float
    peak_bf16: float  # FLOP/s per chip
    chip_config: str | None = None  # TPU chip_config_name (v4: one device per chip)
    chips_per_host: tuple[int, int, int] | None = None  # TPU: hosts of this many chips
    gpu_spec: str | None = None  # GPU: key of GPU_SPECS


# gpu_device_info values from XLA's specs (see the module docstring)
GPU_SPECS = {
    "h100": dict(
        memory_bandwidth=3352320000000, device_memory_size=84942979072, name="NVIDIA H100 80GB HBM3"
    ),
    "h200": dict(
        memory_bandwidth=4800000000000,
        device_memory_size=151397597184,
        name="NVIDIA H200 141GB HBM3e",
    ),
}
_SM90 = dict(
    threads_per_block_limit=1024,
    threads_per_warp=32,
    shared_memory_per_block=49152,
    shared_memory_per_core=233472,
    threads_per_core_limit=2048,
    core_count=132,
    fpus_per_core=128,
    block_dim_limit_x=2147483647,
    block_dim_limit_y=65535,
    block_dim_limit_z=65535,
    l2_cache_size=52428800,
    clock_rate_ghz=1.98,
    shared_memory_per_block_optin=232448,
    registers_per_core_limit=65536,
    registers_per_block_limit=65536,
)

TARGETS = {
    t.name: t
    for t in (
        Target("v4-8", "tpu", "v4:2x2x1", 4, 32.0, 275e12, chip_config="megacore_dense"),
        Target("v5e-8", "tpu", "v5e:2x4", 8, 15.75, 197e12, chips_per_host=(2, 2, 1)),
        Target("v5p-8", "tpu", "v5p:2x2x1", 4, 95.0, 459e12),
        Target("v6e-8", "tpu", "v6e:2x4", 8, 32.0, 918e12, chips_per_host=(2, 2, 1)),
        Target("v5e-16", "tpu", "v5e:4x4", 16, 15.75, 197e12, chips_per_host=(2, 2, 1)),
        Target("h100x8", "gpu", "1x1x8", 8, 84942979072 / GIB, 989e12, gpu_spec="h100"),
        Target("h200x8", "gpu", "1x1x8", 8, 151397597184 / GIB, 989e12, gpu_spec="h200"),
        Target("h200x1", "gpu", "1x1x1", 1, 151397597184 / GIB, 989e12, gpu_spec="h200"),
    )
}


def gpu_target_config(spec: str) -> str:
    """A GpuTargetConfigProto (text format) of a Hopper GPU (compute capability 9.0)."""
    info = {**_SM90, **GPU_SPECS[spec]}
    name = info.pop("name")
    fields = "\n".join(f"  {k}: {v}" for k, v in info.items())
    return (
        f"gpu_device_info {{\n{fields}\n  cuda_compute_capability {{ major: 9 }}\n}}\n"
        'platform_name: "CUDA"\n'
        "dnn_version_info { major: 9 minor: 10 }\n"
        "runtime_version { major: 12 minor: 8 }\n"
        f'device_description_str: "{name}"\n'
    )


def target_devices(target: Target) -> list:
    """The compile-only devices of `target` (ValueError naming what is missing)."""
    from jax.experimental import topologies

    if target.platform == "tpu":
        # another process of this machine (any jax run without JAX_PLATFORMS=cpu) may hold
        # libtpu's lock file; compile-only devices do not need it
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        kwargs = {}
        if target.chip_config:
            kwargs["chip_config_name"] = target.chip_config
        if target.chips_per_host:
            kwargs["chips_per_host_bounds"] = target.chips_per_host
        try:
            desc = topologies.get_topology_desc(
                topology_name=target.topology, platform="tpu", **kwargs
            )
        except Exception as err:  # noqa: BLE001 - libtpu missing or refusing: say which
            raise ValueError(
                f"no TPU topology {target.topology!r} ({err}); install requirements-aot.txt"
            ) from err
    else:
        os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
        try:
            desc = topologies.get_topology_desc(
                platform="cuda",
                topology_name="",
                target_config=gpu_target_config(target.gpu_spec),
                topology=target.topology,
            )
        except Exception as err:  # noqa: BLE001 - plugin missing: say so
            raise ValueError(
                f"no CUDA topology ({err}); install requirements-aot.txt and run with "
                "JAX_PLATFORMS=cpu"
            ) from err
    devices = list(desc.devices)
    if len(devices) != target.chips:
        raise ValueError(f"{target.name}: topology gave {len(devices)} devices, not {target.chips}")
    return devices
