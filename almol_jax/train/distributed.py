"""Multi-host setup: `jax.distributed.initialize` when the config or the environment says so.

Call `maybe_initialize(cfg.mesh)` at the entry point, before any JAX computation. Modes:
  "off"   never initialise (single process).
  "on"    always initialise (coordinator/num_processes/process_id from the config, or detected
          by JAX from the cluster environment when left None).
  "auto"  initialise when the config names a coordinator or several processes, or the
          environment shows a multi-process job: SLURM (SLURM_NTASKS > 1), Open MPI
          (OMPI_COMM_WORLD_SIZE > 1), a multi-host Cloud TPU slice (several TPU_WORKER_HOSTNAMES /
          MEGASCALE_COORDINATOR_ADDRESS) or JAX_COORDINATOR_ADDRESS.
On CPU the cross-process collectives use gloo (jax_cpu_collectives_implementation).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax


def environment_says_multihost(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment variables describe a job with several processes."""
    env = os.environ if env is None else env

    def count(name: str) -> int:
        try:
            return int(env.get(name, "1"))
        except ValueError:
            return 1

    if count("SLURM_NTASKS") > 1 or count("OMPI_COMM_WORLD_SIZE") > 1:
        return True
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1:
        return True
    return bool(env.get("MEGASCALE_COORDINATOR_ADDRESS") or env.get("JAX_COORDINATOR_ADDRESS"))


def should_initialize(mesh_cfg, env: Mapping[str, str] | None = None) -> bool:
    """The decision of `maybe_initialize` for a MeshSection (pure; for tests)."""
    mode = mesh_cfg.distributed
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"mesh.distributed={mode!r} is not one of 'auto', 'on', 'off'")
    if mode == "off":
        return False
    if mode == "on":
        return True
    explicit = mesh_cfg.coordinator_address is not None or (mesh_cfg.num_processes or 1) > 1
    return explicit or environment_says_multihost(env)


def maybe_initialize(mesh_cfg, env: Mapping[str, str] | None = None) -> bool:
    """Initialises jax.distributed when needed (idempotent); returns whether it is initialised."""
    if jax.distributed.is_initialized():
        return True
    if not should_initialize(mesh_cfg, env):
        return False
    platforms = (os.environ if env is None else env).get("JAX_PLATFORMS", "")
    if "cpu" in platforms.split(","):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=mesh_cfg.coordinator_address,
        num_processes=mesh_cfg.num_processes,
        process_id=mesh_cfg.process_id,
    )
    return True
