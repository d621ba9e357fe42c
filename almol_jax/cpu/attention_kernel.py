"""Threaded, mask-aware CPU attention: a C++ kernel (kernels/cpu_attention.cc) via the XLA FFI.

`cpu_attention(q_BTNH, k_BSKH, v_BSKH, mask_BTS)` computes what softmax_attention.py does (same
grouping, float32; rows with no visible key are zeros) with a hand-written backward pass, and
differs in how: the (batch, kv head) items run on XLA's intra-op thread pool (XLA:CPU runs a
batched matrix product on one thread), and a 64 x 64 tile of scores whose keys its queries
cannot see is never computed (a causal, prefix-shared CPO row sees ~45% of its [T, S] square).
The backward pass recomputes the probabilities from the saved log-sum-exp instead of storing
them.

The kernel is compiled on first use with the host's C++ compiler (`$CXX`, else c++ / g++ /
clang++; -O3 -march=native, or `-march=$ALMOL_JAX_KERNEL_MARCH`, e.g. a common baseline for a
cache shared by different CPUs) into a cache directory keyed by the source, the flags, the
jaxlib version and the CPU (`$ALMOL_JAX_KERNEL_CACHE`, default ~/.cache/almol_jax/kernels), then
registered as an FFI target. The vector width follows the target: 16 floats with AVX-512, 8
with AVX, 4 otherwise (SSE, NEON). `available()` says whether that worked and
`unavailable_reason()` why not: the kernel table chosen automatically (`model.kernels: auto`)
then runs softmax_attention.py with a warning, while `model.kernels: cpu` is an error
(model/kernels.py).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

TILE = 64  # query rows and keys per tile, as in the kernel
_SOURCE = Path(__file__).parent / "kernels" / "cpu_attention.cc"
_FORWARD, _BACKWARD = "almol_cpu_attention_fwd", "almol_cpu_attention_bwd"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and (path := shutil.which(name)):
            return path
    return None


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU model and its feature flags (Linux), else the arch."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()


def _cache_dir() -> Path:
    env = os.environ.get("ALMOL_JAX_KERNEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "almol_jax" / "kernels"


def _build() -> Path:
    """Compile the kernel (or reuse the cached build) -> path of the shared library."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++ / clang++)")
    march = os.environ.get("ALMOL_JAX_KERNEL_MARCH", "native")
    flags = ["-O3", f"-march={march}", "-std=c++17", "-shared", "-fPIC", "-Wno-attributes"]
    include = jax.ffi.include_dir()
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(
        b"\0".join(
            [source, " ".join(flags).encode(), jax.__version__.encode(), cxx.encode()]
            + [_cpu_signature().encode()]
        )
    ).hexdigest()[:16]
    out = _cache_dir() / f"cpu_attention-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        part = Path(tmp) / out.name
        cmd = [cxx, *flags, f"-I{include}", str(_SOURCE), "-o", str(part)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        os.replace(part, out)  # atomic: concurrent builders (test workers, hosts) agree
    return out


@functools.cache
def _load() -> str | None:
    """Build, load and register the kernel once per process -> None, or why it is unavailable."""
    import ctypes

    try:
        lib = ctypes.cdll.LoadLibrary(str(_build()))
        for name, symbol in (
            (_FORWARD, "AlmolCpuAttentionForward"),
            (_BACKWARD, "AlmolCpuAttentionBackward"),
        ):
            jax.ffi.register_ffi_target(
                name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu"
            )
    except (OSError, RuntimeError, AttributeError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def available() -> bool:
    """True when the kernel is built and registered for this process (builds it on first call)."""
    return _load() is None


def unavailable_reason() -> str | None:
    return _load()


def require() -> None:
    """Raise RuntimeError with the build's message when the kernel cannot be used."""
    reason = _load()
    if reason is not None:
        raise RuntimeError(f"kernels='cpu': the CPU attention kernel is unavailable: {reason}")


def tile_states(mask_BTS: jax.Array) -> jax.Array:
    """[B, T, S] bool -> [B, T, ceil(S/64)] uint8: 0 no key of the tile visible, 1 some, 2 all."""
    b, t, s = mask_BTS.shape
    j = -(-s // TILE)
    padded = jnp.pad(mask_BTS, ((0, 0), (0, 0), (0, j * TILE - s)), constant_values=False)
    blocks = padded.reshape(b, t, j, TILE)
    # the padding of a partial last tile is hidden, so "all" is judged on the real keys only
    real = np.arange(j * TILE).reshape(j, TILE) < s
    return jnp.any(blocks, -1).astype(jnp.uint8) + jnp.all(blocks | ~real, -1).astype(jnp.uint8)


def _forward_call(q_BTNH, k_BSKH, v_BSKH, mask_BTS, tiles_BTJ, scale):
    b, t, n, h = q_BTNH.shape
    return jax.ffi.ffi_call(
        _FORWARD,
        (
            jax.ShapeDtypeStruct((b, t, n, h), jnp.float32),
            jax.ShapeDtypeStruct((b, n, t), jnp.float32),
        ),
        vmap_method="sequential",
    )(q_BTNH, k_BSKH, v_BSKH, mask_BTS, tiles_BTJ, scale=np.float32(scale))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q_BTNH, k_BSKH, v_BSKH, mask_BTS, tiles_BTJ, scale):
    return _forward_call(q_BTNH, k_BSKH, v_BSKH, mask_BTS, tiles_BTJ, scale)[0]


def _attention_fwd(q_BTNH, k_BSKH, v_BSKH, mask_BTS, tiles_BTJ, scale):
    o_BTNH, lse_BNT = _forward_call(q_BTNH, k_BSKH, v_BSKH, mask_BTS, tiles_BTJ, scale)
    return o_BTNH, (q_BTNH, k_BSKH, v_BSKH, mask_BTS, tiles_BTJ, o_BTNH, lse_BNT)


def _attention_bwd(scale, residuals, do_BTNH):
    q_BTNH, k_BSKH, v_BSKH, mask_BTS, tiles_BTJ, o_BTNH, lse_BNT = residuals
    dq, dk, dv = jax.ffi.ffi_call(
        _BACKWARD,
        tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q_BTNH, k_BSKH, v_BSKH)),
        vmap_method="sequential",
    )(
        q_BTNH,
        k_BSKH,
        v_BSKH,
        mask_BTS,
        tiles_BTJ,
        o_BTNH,
        lse_BNT,
        do_BTNH.astype(jnp.float32),
        scale=np.float32(scale),
    )
    return dq, dk, dv, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def cpu_attention(
    q_BTNH: jax.Array, k_BSKH: jax.Array, v_BSKH: jax.Array, mask_BTS: jax.Array
) -> jax.Array:
    """softmax(q k^T / sqrt(H) masked) v over grouped heads -> [B, T, N, H] (float32 inputs).

    Query head n reads kv head n // (N / K) (Hugging Face's grouping); a query with no visible
    key gets zeros. Builds and registers the kernel on first use (RuntimeError if it cannot)."""
    require()
    h = q_BTNH.shape[-1]
    mask_BTS = mask_BTS.astype(bool)
    return _attention(
        q_BTNH,
        k_BSKH,
        v_BSKH,
        mask_BTS.astype(jnp.uint8),
        tile_states(mask_BTS),
        1.0 / float(h) ** 0.5,
    )
