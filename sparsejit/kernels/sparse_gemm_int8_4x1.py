"""Sparse int8 GEMM on 4 x 1 blocks (4 consecutive k of one output column), vectorised along M.

The finest structure VNNI can use: `vpdpbusd` multiplies 4 bytes by 4 bytes per 32-bit lane, so a
block is one column's 4 weights w[4g:4g+4, n] (one k-group g), kept when any of them is non-zero.
Where the 4 x 16 kernel (`sparse_gemm_int8`) keeps its lanes along N (16 output columns per block),
this one puts 16 *rows* of the activation in the lanes: the quantised activation is re-laid out
once per call as ``a16[row group][g][16 rows]`` (4 bytes per lane, transposed in registers), and per
stored block the weight's 4 bytes are broadcast and `vpdpbusd`-ed against 4 row groups (64 rows).
Each column's sums are thus a column of the output; 16 columns are collected and transposed back
(`simd.vtranspose16`) so that the epilogue — dequantise with `comp`/`scale`, bias, activation,
residual — runs on output rows exactly as in the dense VNNI GEMM (`gemm_int8.qgemm`), with the same
operations, so the results are bit-identical to it.

Weights must be symmetric (zero point 0, a pruned weight is exactly 0). No dense copy is kept.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, prange

from sparsejit.kernels.codegen import load_generated_once
from sparsejit.kernels.gemm import _ACT_FN, ACTIVATIONS
from sparsejit.kernels.simd import vtranspose16
from sparsejit.kernels.simd_int8 import fake_quant_vector
from sparsejit.kernels.threading import configure_threading, dynamic_tasks
from sparsejit.kernels.tiles import activation_call, activation_import, dequantize_add_bias

__all__ = ["KSparseInt8", "ksparse_int8", "ksparse_qgemm", "lanes_scratch_size", "ROW_GROUPS"]

configure_threading()

ROW_GROUPS = 4  # 16-row groups per task: 4 independent vpdpbusd chains per broadcast weight
_HERE = Path(__file__)
_DEPS = hashlib.sha1(b"".join(p.read_bytes() for p in (
    _HERE, _HERE.with_name("simd.py"), _HERE.with_name("simd_int8.py"), _HERE.with_name("gemm.py"),
    _HERE.with_name("sparse_gemm.py")))).hexdigest()[:12]


@dataclass(frozen=True)
class KSparseInt8:
    """W [K, N] int8 as 4 x 1 blocks: per column, its non-zero k-groups and their 4 bytes."""

    ptr: np.ndarray  # int64 [N + 1]: blocks of column n are ptr[n]:ptr[n+1]
    groups: np.ndarray  # int32 [nnzb]: k-group g of each block (k = 4g .. 4g+3)
    values: np.ndarray  # int32 [nnzb]: the block's 4 bytes, byte b = w[4g + b, n]
    k: int
    kp: int
    n: int

    @property
    def nnz_blocks(self) -> int:
        return int(self.groups.size)

    @property
    def density(self) -> float:
        """Fraction of the (KP / 4) x N blocks that are stored."""
        return self.nnz_blocks / max(1, (self.kp // 4) * self.n)

    @property
    def nbytes(self) -> int:
        return int(self.ptr.nbytes + self.groups.nbytes + self.values.nbytes)

    def to_dense(self) -> np.ndarray:
        """Reconstruct the signed [K, N] int8 matrix (for tests)."""
        full = np.zeros((self.kp // 4, self.n, 4), dtype=np.int8)
        cols = np.repeat(np.arange(self.n), np.diff(self.ptr))
        full[self.groups, cols] = self.values.view(np.int8).reshape(-1, 4)
        return full.transpose(0, 2, 1).reshape(self.kp, self.n)[: self.k]


def ksparse_int8(w_s8: np.ndarray) -> KSparseInt8:
    """Compress a signed int8 [K, N] weight (zero point 0) into its non-zero 4 x 1 blocks."""
    if w_s8.ndim != 2 or w_s8.dtype != np.int8:
        raise ValueError(f"expected a 2-D int8 weight, got {w_s8.dtype} {w_s8.shape}")
    k, n = (int(s) for s in w_s8.shape)
    kp = 4 * max(1, -(-k // 4))
    padded = np.zeros((kp, n), dtype=np.int8)
    padded[:k] = w_s8
    blocks = np.ascontiguousarray(padded.reshape(kp // 4, 4, n).transpose(2, 0, 1))  # [N, G, 4]
    keep = np.any(blocks != 0, axis=2)  # [N, G]
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=ptr[1:])
    cols, groups = np.nonzero(keep)  # by column, g ascending
    values = np.ascontiguousarray(blocks[cols, groups]).view(np.int32).reshape(-1)
    return KSparseInt8(ptr=ptr, groups=groups.astype(np.int32), values=values.copy(), k=k, kp=kp, n=n)


@njit(parallel=True, cache=True)
def _rows_to_lanes(aq, m, g_count, a16):  # pragma: no cover - compiled
    """a16[mg, g, lane] = the 4 bytes aq[mg*16 + lane, 4g:4g+4] (as int32); rows past m are zero."""
    src = aq.reshape(-1).view(np.float32)  # 4 bytes per element: the shuffles move bits unchanged
    dst = a16.reshape(-1).view(np.float32)
    n_groups = a16.shape[0]
    whole = g_count // 16 * 16
    for mg in prange(n_groups):
        r0 = mg * 16
        rows = min(16, m - r0)
        for g0 in range(0, whole, 16):
            vtranspose16(src, r0 * g_count + g0, g_count, rows, dst, (mg * g_count + g0) * 16, 16)
        for g in range(whole, g_count):
            for lane in range(16):
                dst[(mg * g_count + g) * 16 + lane] = src[(r0 + lane) * g_count + g] if lane < rows else 0.0


def _gen_source(act: str | None, fake_quant: bool = False) -> str:
    """`fake_quant`: the float epilogue rounds to the grids of its `fq` argument (`tiles.dequantize_add_bias`)."""
    rg = ROW_GROUPS
    L: list[str] = []
    emit = L.append
    emit(f"# Generated by sparsejit.kernels.sparse_gemm_int8_4x1: act={act} row groups={rg} "
         f"fake_quant={fake_quant} deps={_DEPS}")
    emit("import numpy as np")
    emit("from numba import njit, prange")
    emit("from sparsejit.kernels.simd import (vadd, vcvt_i2f, vdpbusd, vfma, vibroadcast, viload, vistore,"
         " vizero, vload, vload_mask, vmul, vstore_mask, vtranspose16)")
    emit("from sparsejit.kernels.simd_int8 import vfake_quant, visub")
    emit("from sparsejit.kernels.sparse_gemm import iload")
    if act is not None:
        emit(activation_import(act, fake_quant, _ACT_FN[act]))
    emit("")
    sig = ("void(int32[::1], int32[::1], int32[::1], int64[::1], float32[::1], int32[::1], float32[::1], "
           "float32[::1], float32[::1], int64, int64, int64, boolean, float32[::1])")
    emit(f'@njit("{sig}", parallel=True, cache=True, fastmath=True)')
    emit("def ksparse_qgemm_kernel(a16, vals, groups, ptr, out, comp, scale, bias, res, M, G, N, has_res, fq):")
    emit("    n_mg = (M + 15) // 16")
    emit(f"    n_mb = (n_mg + {rg - 1}) // {rg}")
    emit("    n_ct = (N + 15) // 16")
    emit("    for t in prange(n_mb * n_ct):")
    emit("        mb = t // n_ct")
    emit("        c0 = (t - mb * n_ct) * 16")
    emit("        width = min(16, N - c0)")
    emit(f"        g0 = mb * {rg}")
    emit(f"        cols = np.zeros({rg} * 256, dtype=np.int32)  # [row group][column][16 rows]")
    emit("        rows = np.empty(256, dtype=np.int32)")
    for r in range(rg):
        emit(f"        ao{r} = (g0 + {r}) * G * 16")
    emit("        for c in range(width):")
    for r in range(rg):
        emit(f"            acc{r} = vizero()")
    emit("            for j in range(ptr[c0 + c], ptr[c0 + c + 1]):")
    emit("                w = vibroadcast(iload(vals, j))")
    emit("                go = iload(groups, j) * 16")
    for r in range(rg):
        emit(f"                acc{r} = vdpbusd(acc{r}, viload(a16, ao{r} + go), w)")
    for r in range(rg):
        emit(f"            vistore(cols, {r * 256} + c * 16, acc{r})")
    emit("        colsf = cols.view(np.float32)")
    emit("        rowsf = rows.view(np.float32)")
    emit("        k0 = viload(comp, c0)")
    emit("        s0 = vload(scale, c0)")
    emit("        e0 = vload(bias, c0)")
    emit(f"        for r in range({rg}):")
    emit("            i0 = (g0 + r) * 16")
    emit("            if i0 >= M:")
    emit("                break")
    emit("            vtranspose16(colsf, r * 256, 16, 16, rowsf, 0, 16)")
    emit("            for i in range(min(16, M - i0)):")
    emit("                row = (i0 + i) * N + c0")
    emit("                x = visub(viload(rows, i * 16), k0)")
    L.extend(dequantize_add_bias("x", "s0", "e0", "                ", fake_quant))
    if act is not None:
        emit(f"                f = {activation_call(act, fake_quant)}")
    emit("                if has_res:")
    emit("                    f = vadd(f, vload_mask(res, row, width))")
    if fake_quant:
        emit("                f = vfake_quant(f, fq, 2)")
    emit("                vstore_mask(out, row, f, width)")
    emit("")
    return "\n".join(L)


def _kernel(act: str | None, fake_quant: bool = False) -> Any:
    return load_generated_once(f"ksparse_qgemm_{act or 'id'}{'_fq' if fake_quant else ''}",
                               lambda: _gen_source(act, fake_quant)).ksparse_qgemm_kernel


_EMPTY_F = np.zeros(16, dtype=np.float32)
_NO_FAKE_QUANT = fake_quant_vector(None)


def _padded(v: np.ndarray, size: int, dtype: Any) -> np.ndarray:
    v = np.ascontiguousarray(v, dtype=dtype).reshape(-1)
    if v.size >= size:
        return v
    out = np.zeros(size, dtype)
    out[: v.size] = v
    return out


def ksparse_qgemm(a_q: np.ndarray, weight: KSparseInt8, out: np.ndarray, comp: np.ndarray, scale: np.ndarray,
                  bias: np.ndarray | None = None, activation: str | None = None,
                  residual: np.ndarray | None = None, scratch: np.ndarray | None = None,
                  fake_quant: np.ndarray | None = None) -> None:
    """out = act(float(a_q @ W - comp) * scale + bias) + residual with W in 4 x 1 blocks (float32 out);
    `fake_quant` (float32, `simd_int8.fake_quant_params`): rounded as `gemm_int8.bind_qgemm`'s.

    `a_q` is uint8 [M, KP]; `comp` (int32), `scale` and `bias` (float32) are per-column vectors of at
    least N entries (as for `gemm_int8.qgemm`). `scratch` (int32, `lanes_scratch_size(M, KP)`
    elements) holds the re-laid-out activation; one is allocated when not given.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {activation!r}")
    m = a_q.shape[0]
    if a_q.dtype != np.uint8 or a_q.shape[1] != weight.kp or not a_q.flags.c_contiguous:
        raise ValueError(f"a_q must be C-contiguous uint8 [M, {weight.kp}], got {a_q.dtype} {a_q.shape}")
    if out.dtype != np.float32 or out.size != m * weight.n:
        raise ValueError(f"out must be float32 with {m}x{weight.n} elements")
    if m == 0 or weight.n == 0:
        return
    pad = -(-weight.n // 16) * 16
    g_count = weight.kp // 4
    size = lanes_scratch_size(m, weight.kp)
    if scratch is None or scratch.size < size or scratch.dtype != np.int32:
        scratch = np.empty(size, np.int32)
    a16 = scratch[:size].reshape(-1, g_count, 16)
    res_f = _EMPTY_F if residual is None else np.ascontiguousarray(residual, dtype=np.float32).reshape(-1)
    if residual is not None and np.may_share_memory(res_f, out):
        res_f = res_f.copy()
    bias_f = np.zeros(pad, np.float32) if bias is None else _padded(bias, pad, np.float32)
    with dynamic_tasks():
        _rows_to_lanes(a_q, m, g_count, a16)
        fq = _NO_FAKE_QUANT if fake_quant is None else fake_quant_vector(fake_quant)
        _kernel(activation, fake_quant is not None)(
            a16.reshape(-1), weight.values, weight.groups, weight.ptr, out.reshape(-1), _padded(comp, pad, np.int32),
            _padded(scale, pad, np.float32), bias_f, res_f, m, g_count, weight.n, residual is not None, fq)


def lanes_scratch_size(m: int, kp: int) -> int:
    """int32 elements of the activation re-laid out in 16-row lanes (whole tasks of row groups)."""
    groups = -(-m // 16)
    return (-(-groups // ROW_GROUPS) * ROW_GROUPS) * (kp // 4) * 16
