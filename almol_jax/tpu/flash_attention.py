"""Pallas flash attention for TPU over the prefix-shared mask, built blockwise from per-token codes.

`attention(q_BTNH, k_BSKH, v_BSKH, mask)` is the portable kernel table's "flash" attention
(model/kernels.py). The mask is never an array of [T, S]: each query carries a code
(segment << 2 | role) and its key index, each key a code (INVALID_KEY for padding), and a query
sees a key iff

    key index <= query index  AND  same segment  AND  (key role == prompt OR key role == query role)

(ops.attention.Mask; the dense rule is model/attention.build_mask's): causal + segment + role, so
that in a prefix-shared row the chosen and the rejected response see the prompt and themselves,
never each other. A query that sees no key gets zeros.

Forward: one kernel over the grid (batch, head, query block, key block) with the online softmax
(running max, sum and output in VMEM scratch), saving the log-sum-exp per query. Backward (custom
VJP, FlashAttention-2): a dq kernel over (batch, head, query block, key block) and a dk/dv kernel
over (batch, head, key block, query block), recomputing the probabilities of each tile from the
saved log-sum-exp. Softmax and accumulations in float32; the P @ V and dS products take the input
dtype. Every tile is computed (no causal block skipping, as gathered label queries have arbitrary
indices): ~2x the useful attention FLOPs, a few percent of a 7B step at 768 tokens.

Layout constraints of Mosaic (the TPU compiler): blocks of 128 queries and 128 keys (sequences are
padded to a multiple, padded keys invisible), per-query statistics stored broadcast over the 128
lanes, key codes over 8 sublanes. `interpret=True` runs the same kernels with Pallas's
interpreter on any backend (the tests check values and gradients against jax.nn on the CPU).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from almol_jax.ops.attention import INVALID_KEY, Mask, zero_keyless_rows
from almol_jax.ops.attention import attention as xla_attention

LANES, SUBLANES = 128, 8  # a TPU vector register is [8, 128]
BLOCK = 128  # queries and keys per tile
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b
_SEMANTICS = ("parallel", "parallel", "parallel", "arbitrary")


def _visible(qc_ref, qp_ref, kc_ref, key_block) -> jax.Array:
    """[bq, bk] bool: which keys of this tile each query sees (module docstring)."""
    q_code, q_pos = qc_ref[:, :1], qp_ref[:, :1]  # [bq, 1]
    k_code = kc_ref[:1, :]  # [1, bk]
    shape = (q_code.shape[0], k_code.shape[1])
    k_pos = key_block * k_code.shape[1] + jax.lax.broadcasted_iota(jnp.int32, shape, 1)
    same_segment = (q_code >> 2) == (k_code >> 2)
    role = ((k_code & 3) == 0) | (k_code == q_code)
    return same_segment & role & (k_pos <= q_pos)


def _scores(q_ref, k_ref, scale) -> jax.Array:
    return jax.lax.dot_general(q_ref[...], k_ref[...], _NT, preferred_element_type=jnp.float32) * (
        scale
    )


def _fwd_kernel(qc, qp, kc, q_ref, k_ref, v_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc, *, scale):
    j, last = pl.program_id(3), pl.num_programs(3) - 1

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, MASK_VALUE, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    visible = _visible(qc, qp, kc, j)
    s = jnp.where(visible, _scores(q_ref, k_ref, scale), MASK_VALUE)
    m_prev = m_sc[:, :1]
    m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
    p = jnp.where(visible, jnp.exp(s - m_next), 0.0)
    alpha = jnp.exp(m_prev - m_next)
    l_sc[...] = jnp.broadcast_to(
        alpha * l_sc[:, :1] + jnp.sum(p, axis=1, keepdims=True), l_sc.shape
    )
    m_sc[...] = jnp.broadcast_to(m_next, m_sc.shape)
    pv = jnp.dot(p.astype(v_ref.dtype), v_ref[...], preferred_element_type=jnp.float32)
    acc_sc[...] = acc_sc[...] * alpha + pv

    @pl.when(j == last)
    def _store():
        total = l_sc[:, :1]
        seen = total > 0.0
        o_ref[...] = jnp.where(seen, acc_sc[...] / jnp.where(seen, total, 1.0), 0.0).astype(
            o_ref.dtype
        )
        lse = m_sc[:, :1] + jnp.log(jnp.where(seen, total, 1.0))
        lse_ref[...] = jnp.broadcast_to(jnp.where(seen, lse, 0.0), lse_ref.shape)


def _probabilities(qc, qp, kc, q_ref, k_ref, lse_ref, key_block, scale) -> jax.Array:
    visible = _visible(qc, qp, kc, key_block)
    return jnp.where(visible, jnp.exp(_scores(q_ref, k_ref, scale) - lse_ref[:, :1]), 0.0)


def _dscores(p, do_ref, v_ref, di_ref) -> jax.Array:
    dp = jax.lax.dot_general(do_ref[...], v_ref[...], _NT, preferred_element_type=jnp.float32)
    return p * (dp - di_ref[:, :1])


def _dq_kernel(qc, qp, kc, q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref, dq_ref, dq_sc, *, scale):
    j, last = pl.program_id(3), pl.num_programs(3) - 1

    @pl.when(j == 0)
    def _init():
        dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

    p = _probabilities(qc, qp, kc, q_ref, k_ref, lse_ref, j, scale)
    ds = _dscores(p, do_ref, v_ref, di_ref)
    dq_sc[...] += jnp.dot(ds.astype(k_ref.dtype), k_ref[...], preferred_element_type=jnp.float32)

    @pl.when(j == last)
    def _store():
        dq_ref[...] = (dq_sc[...] * scale).astype(dq_ref.dtype)


def _dkv_kernel(
    qc, qp, kc, q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref, dk_ref, dv_ref, dk_sc, dv_sc, *, scale
):
    j, i, last = pl.program_id(2), pl.program_id(3), pl.num_programs(3) - 1

    @pl.when(i == 0)
    def _init():
        dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
        dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

    p = _probabilities(qc, qp, kc, q_ref, k_ref, lse_ref, j, scale)
    do = do_ref[...]
    dv_sc[...] += jax.lax.dot_general(
        p.astype(do.dtype), do, _TN, preferred_element_type=jnp.float32
    )
    ds = _dscores(p, do_ref, v_ref, di_ref)
    dk_sc[...] += jax.lax.dot_general(
        ds.astype(q_ref.dtype), q_ref[...], _TN, preferred_element_type=jnp.float32
    )

    @pl.when(i == last)
    def _store():
        dk_ref[...] = (dk_sc[...] * scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _specs(h: int, *, keys_outer: bool):
    """BlockSpecs of (q codes, q positions, k codes, q-side [bq, H], k-side [bk, H], q-side
    lanes [bq, 128]) for a grid (b, n, outer, inner); `keys_outer`: the dk/dv kernel's order."""

    def q_block(b, n, x, y):
        return (b, n, y if keys_outer else x, 0)

    def k_block(b, n, x, y):
        return (b, n, x if keys_outer else y, 0)

    def q_codes(b, n, x, y):
        return (b, y if keys_outer else x, 0)

    def k_codes(b, n, x, y):
        return (b, 0, x if keys_outer else y)

    sq = pl.Squeezed()
    return dict(
        q_code=pl.BlockSpec((sq, BLOCK, LANES), q_codes),
        k_code=pl.BlockSpec((sq, SUBLANES, BLOCK), k_codes),
        q=pl.BlockSpec((sq, sq, BLOCK, h), q_block),
        k=pl.BlockSpec((sq, sq, BLOCK, h), k_block),
        lanes=pl.BlockSpec((sq, sq, BLOCK, LANES), q_block),
    )


def _call(kernel, grid, in_specs, out_specs, out_shape, scratch, interpret, *args):
    return pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=0,
            grid=grid,
            in_specs=in_specs,
            out_specs=out_specs,
            scratch_shapes=scratch,
        ),
        out_shape=out_shape,
        compiler_params=pltpu.CompilerParams(dimension_semantics=_SEMANTICS),
        interpret=interpret,
    )(*args)


def _forward(codes, q, k, v, scale, interpret):
    b, n, t, h = q.shape
    sp = _specs(h, keys_outer=False)
    code_specs = [sp["q_code"], sp["q_code"], sp["k_code"]]
    f32 = jnp.float32
    return _call(
        functools.partial(_fwd_kernel, scale=scale),
        (b, n, t // BLOCK, k.shape[2] // BLOCK),
        code_specs + [sp["q"], sp["k"], sp["k"]],
        [sp["q"], sp["lanes"]],
        [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, n, t, LANES), f32)],
        [pltpu.VMEM((BLOCK, LANES), f32), pltpu.VMEM((BLOCK, LANES), f32)]
        + [pltpu.VMEM((BLOCK, h), f32)],
        interpret,
        *codes,
        q,
        k,
        v,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _flash(codes, q, k, v, scale, interpret):
    return _forward(codes, q, k, v, scale, interpret)[0]


def _flash_fwd(codes, q, k, v, scale, interpret):
    o, lse = _forward(codes, q, k, v, scale, interpret)
    return o, (codes, q, k, v, o, lse)


def _flash_bwd(scale, interpret, residuals, do):
    codes, q, k, v, o, lse = residuals
    b, n, t, h = q.shape
    s = k.shape[2]
    di = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1, keepdims=True)
    di = jnp.broadcast_to(di, lse.shape)
    f32 = jnp.float32
    args = (*codes, q, k, v, do, lse, di)
    sp = _specs(h, keys_outer=False)
    common = [sp["q_code"], sp["q_code"], sp["k_code"], sp["q"], sp["k"], sp["k"], sp["q"]]
    dq = _call(
        functools.partial(_dq_kernel, scale=scale),
        (b, n, t // BLOCK, s // BLOCK),
        common + [sp["lanes"], sp["lanes"]],
        sp["q"],
        jax.ShapeDtypeStruct(q.shape, q.dtype),
        [pltpu.VMEM((BLOCK, h), f32)],
        interpret,
        *args,
    )
    sp = _specs(h, keys_outer=True)
    common = [sp["q_code"], sp["q_code"], sp["k_code"], sp["q"], sp["k"], sp["k"], sp["q"]]
    dk, dv = _call(
        functools.partial(_dkv_kernel, scale=scale),
        (b, n, s // BLOCK, t // BLOCK),
        common + [sp["lanes"], sp["lanes"]],
        [sp["k"], sp["k"]],
        [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        [pltpu.VMEM((BLOCK, h), f32), pltpu.VMEM((BLOCK, h), f32)],
        interpret,
        *args,
    )
    return None, dq, dk, dv


_flash.defvjp(_flash_fwd, _flash_bwd)


def _pad_to_block(x: jax.Array, axis: int, value) -> jax.Array:
    extra = -x.shape[axis] % BLOCK
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def attention(
    q_BTNH: jax.Array,
    k_BSKH: jax.Array,
    v_BSKH: jax.Array,
    mask: Mask,
    *,
    interpret: bool = False,
) -> jax.Array:
    """softmax(q k^T / sqrt(H), masked by `mask`'s codes) v -> [B, T, N, H], keyless rows 0.

    A mask without codes (an arbitrary [B, T, S] mask) runs jax.nn's XLA attention instead."""
    if mask.q_code_BT is None:
        out = xla_attention(q_BTNH, k_BSKH, v_BSKH, mask.dense_BTS, implementation="xla")
        return zero_keyless_rows(out, mask.dense_BTS)
    b, t, n, h = q_BTNH.shape
    groups = n // k_BSKH.shape[2]
    k_BSNH, v_BSNH = (jnp.repeat(x.astype(q_BTNH.dtype), groups, axis=2) for x in (k_BSKH, v_BSKH))
    q, k, v = (_pad_to_block(x.transpose(0, 2, 1, 3), 2, 0) for x in (q_BTNH, k_BSNH, v_BSNH))
    q_code = _pad_to_block(mask.q_code_BT, 1, 0)
    q_pos = _pad_to_block(mask.q_pos_BT, 1, 0)
    k_code = _pad_to_block(mask.k_code_BS, 1, INVALID_KEY)
    codes = (
        jnp.broadcast_to(q_code[:, :, None], q_code.shape + (LANES,)),
        jnp.broadcast_to(q_pos[:, :, None], q_pos.shape + (LANES,)),
        jnp.broadcast_to(k_code[:, None, :], (b, SUBLANES, k_code.shape[1])),
    )
    o_BNTH = _flash(codes, q, k, v, h**-0.5, interpret)
    return o_BNTH[:, :, :t].transpose(0, 2, 1, 3)
