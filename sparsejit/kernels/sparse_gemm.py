"""Sparse fp32 GEMM for constant weights, with the same epilogue contract as `gemm.gemm`.

    out = act(a @ W + bias) + residual        a: [..., K] float32, W: [K, N] constant, sparse

Two compressed forms (the dense weight is not kept by either):

- `BlockSparse` (1 x BW blocks along N, BW in {16, 32, 64}): W is cut into column blocks of BW
  columns; for each column block the K rows whose BW-wide slice is not all zero are listed, and
  their values stored as 64-byte aligned BW-float rows. The kernel keeps an MR x BW tile of `out` in
  zmm accumulators and, per listed k, broadcasts a[i, k] of MR rows and FMAs them with the block row
  (one 512-bit load per 16 columns): the dense micro-kernel with the zero rows of the panel skipped.
- `CscSparse` (unstructured): per output column n, the k indices and values of its non-zeros. `a` is
  transposed into aT [K, M16] (M rounded up to 16) so a column of the product is computed as MV
  vectors of 16 rows: out^T[n, m:m+16 MV] += w[k, n] * aT[k, m:m+16 MV]. The result (out^T) is
  transposed back while the epilogue runs.

Kernels are generated per (tile, activation) only — K, N and M are run-time values — so a handful
of kernels serve every layer, and they go through `codegen.load_generated` (Numba's disk cache).
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
from llvmlite import ir
from numba import get_num_threads, njit, prange, types
from numba.extending import intrinsic

from sparsejit.kernels.codegen import load_generated_once
from sparsejit.kernels.gemm import _aligned_empty, _check_activation, gemm_operands
from sparsejit.kernels.simd import _elem_ptr
from sparsejit.kernels.threading import configure_threading, dynamic_tasks
from sparsejit.kernels.tiles import fma_tile, masked_store_tile, zero_tile

__all__ = ["BlockSparse", "CscSparse", "BLOCK_WIDTHS", "block_sparse", "csc_sparse", "sparse_gemm",
           "iload"]

configure_threading()

BLOCK_WIDTHS = (16, 32, 64)
_BLOCK_MR = {16: 8, 32: 6, 64: 4}  # rows per register tile: 8-16 accumulators
_L2_A_BUDGET = 384 * 1024

_DEPS = hashlib.sha1(b"".join(p.read_bytes() for p in (
    Path(__file__), Path(__file__).with_name("simd.py"), Path(__file__).with_name("gemm.py")))).hexdigest()[:12]


@intrinsic
def iload(typingctx, arr, off):  # type: ignore[no-untyped-def]
    """Element `off` of an int32 array as intp, by raw pointer (no bounds or wrap-around checks)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int32):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
        return builder.sext(builder.load(ptr, align=4), ir.IntType(64))
    return types.intp(arr, types.intp), codegen


# ----------------------------------------------------------------------------------------------
# compressed forms


@dataclass(frozen=True)
class BlockSparse:
    """W [K, N] as 1 x BW blocks along N: per column block, the non-zero rows and their values."""

    ptr: np.ndarray  # int64 [n_cb + 1]: blocks of column block c are ptr[c]:ptr[c+1]
    rows: np.ndarray  # int32 [nnzb]: k of each block
    values: np.ndarray  # float32 [nnzb * BW], 64-byte aligned; columns past N are zero
    k: int
    n: int
    bw: int

    @property
    def nnz_blocks(self) -> int:
        return int(self.rows.size)

    @property
    def density(self) -> float:
        """Fraction of the K x ceil(N / BW) blocks that are stored."""
        return self.nnz_blocks / max(1, self.k * (self.ptr.size - 1))

    @property
    def nbytes(self) -> int:
        return int(self.ptr.nbytes + self.rows.nbytes + self.values.nbytes)

    def to_dense(self) -> np.ndarray:
        """Reconstruct the [K, N] float32 matrix (for tests)."""
        n_cb = self.ptr.size - 1
        full = np.zeros((self.k, n_cb * self.bw), dtype=np.float32)
        vals = self.values.reshape(-1, self.bw)
        for c in range(n_cb):
            s, e = self.ptr[c], self.ptr[c + 1]
            full[self.rows[s:e], c * self.bw:(c + 1) * self.bw] = vals[s:e]
        return full[:, : self.n]


@dataclass(frozen=True)
class CscSparse:
    """W [K, N] unstructured: per column n, the k indices and values of its non-zeros."""

    ptr: np.ndarray  # int64 [N + 1]
    rows: np.ndarray  # int32 [nnz]
    values: np.ndarray  # float32 [nnz]
    k: int
    n: int

    @property
    def nnz(self) -> int:
        return int(self.rows.size)

    @property
    def nbytes(self) -> int:
        return int(self.ptr.nbytes + self.rows.nbytes + self.values.nbytes)

    def to_dense(self) -> np.ndarray:
        full = np.zeros((self.k, self.n), dtype=np.float32)
        cols = np.repeat(np.arange(self.n), np.diff(self.ptr))
        full[self.rows, cols] = self.values
        return full


def _check_weight(w: np.ndarray) -> np.ndarray:
    if w.ndim != 2:
        raise ValueError(f"sparse weights must be 2-D [K, N], got shape {w.shape}")
    return np.asarray(w, dtype=np.float32)


def block_sparse(w: np.ndarray, bw: int = 32) -> BlockSparse:
    """Compress a [K, N] weight into 1 x `bw` blocks along N (all-zero blocks dropped)."""
    if bw not in BLOCK_WIDTHS:
        raise ValueError(f"block width must be one of {BLOCK_WIDTHS}, got {bw}")
    w = _check_weight(w)
    k, n = w.shape
    n_cb = max(1, -(-n // bw))
    padded = np.zeros((k, n_cb * bw), dtype=np.float32)
    padded[:, :n] = w
    blocks = padded.reshape(k, n_cb, bw).transpose(1, 0, 2)  # [n_cb, K, BW]
    keep = np.any(blocks != 0, axis=2)  # [n_cb, K]
    counts = keep.sum(axis=1)
    ptr = np.zeros(n_cb + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    cb_idx, rows = np.nonzero(keep)  # row-major over [n_cb, K]: grouped by column block, k ascending
    values = _aligned_empty((max(1, rows.size) * bw,))
    values[: rows.size * bw] = blocks[cb_idx, rows].reshape(-1)
    if rows.size == 0:
        values[:] = 0.0
    return BlockSparse(ptr=ptr, rows=rows.astype(np.int32), values=values, k=k, n=n, bw=bw)


def csc_sparse(w: np.ndarray) -> CscSparse:
    """Compress a [K, N] weight into per-column (CSC) lists of non-zeros."""
    w = _check_weight(w)
    k, n = w.shape
    cols, rows = np.nonzero(w.T)  # grouped by column, k ascending
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(cols, minlength=n), out=ptr[1:])
    values = np.ascontiguousarray(w.T[cols, rows], dtype=np.float32)
    if values.size == 0:  # keep the arrays non-empty for the kernels' signatures
        return CscSparse(ptr=ptr, rows=np.zeros(1, np.int32), values=np.zeros(1, np.float32), k=k, n=n)
    return CscSparse(ptr=ptr, rows=rows.astype(np.int32), values=values, k=k, n=n)


# ----------------------------------------------------------------------------------------------
# code generation


def _header(kind: str, act: str | None) -> list[str]:
    lines = [f"# Generated by sparsejit.kernels.sparse_gemm: {kind} act={act} deps={_DEPS}",
             "from numba import njit, prange",
             "from sparsejit.kernels.simd import (vadd, vfma, vload_a, vload_bcast, vload_mask, vstore_a,"
             " vstore_mask, vzero)",
             "from sparsejit.kernels.sparse_gemm import iload"]
    if act is not None:
        lines.append(f"from sparsejit.kernels.gemm import _act_{act} as _act")
    lines.append("")
    return lines


def _epilogue_source(act: str | None) -> list[str]:
    """`_epilogue(out, bias, res, row_off, width, col0, has_bias, has_res)` on one row segment."""
    L = ["@njit(cache=True, fastmath=True)",
         "def _epilogue(out, bias, res, off, width, c0, has_bias, has_res):",
         "    for j in range(0, width, 16):",
         "        m = min(16, width - j)",
         "        v = vload_mask(out, off + j, m)",
         "        if has_bias:",
         "            v = vadd(v, vload_mask(bias, c0 + j, m))"]
    if act is not None:
        L.append("        v = _act(v)")
    L += ["        if has_res:",
          "            v = vadd(v, vload_mask(res, off + j, m))",
          "        vstore_mask(out, off + j, v, m)",
          ""]
    return L


def _gen_block_source(bw: int, mr: int, act: str | None) -> str:
    nv = bw // 16
    L = _header(f"block 1x{bw} MR={mr}", act)
    emit = L.append
    emit(f"BW = {bw}\nMR = {mr}\n")
    emit("@njit(cache=True, fastmath=True)")
    emit("def _micro(a, vals, rows, p0, p1, out, i0, nrows, c0, width, M, K, N):")
    for r in range(mr):
        emit(f"    ao{r} = min(i0 + {r}, M - 1) * K")
    L.extend(zero_tile(mr, nv, "    "))
    emit("    for j in range(p0, p1):")
    emit("        k = iload(rows, j)")
    emit("        vo = j * BW")
    for v in range(nv):
        emit(f"        b{v} = vload_a(vals, vo + {16 * v})")
    L.extend(fma_tile(mr, nv, "        "))
    for v in range(nv):
        emit(f"    m{v} = max(0, min(16, width - {16 * v}))")
    emit("    co = i0 * N + c0")
    L.extend(masked_store_tile(mr, nv, lambda r, v: f"co + {r} * N + {16 * v}", "    "))
    emit("")
    L += _epilogue_source(act)
    sig = ("void(float32[::1], float32[::1], int32[::1], int64[::1], float32[::1], float32[::1], "
           "float32[::1], int64, int64, int64, int64, boolean, boolean)")
    emit(f'@njit("{sig}", parallel=True, cache=True)')
    emit("def block_kernel(a, vals, rows, ptr, out, bias, res, M, K, N, tpb, has_bias, has_res):")
    emit("    n_cb = (N + BW - 1) // BW")
    emit("    n_mt = (M + MR - 1) // MR")
    emit("    n_mb = (n_mt + tpb - 1) // tpb")
    emit("    for t in prange(n_mb * n_cb):")
    emit("        mb = t // n_cb")
    emit("        cb = t - mb * n_cb")
    emit("        c0 = cb * BW")
    emit("        width = min(BW, N - c0)")
    emit("        p0 = ptr[cb]")
    emit("        p1 = ptr[cb + 1]")
    emit("        for mt in range(mb * tpb, min(mb * tpb + tpb, n_mt)):")
    emit("            i0 = mt * MR")
    emit("            nrows = min(MR, M - i0)")
    emit("            _micro(a, vals, rows, p0, p1, out, i0, nrows, c0, width, M, K, N)")
    ind = "            "
    if act is None:
        emit("            if has_bias or has_res:")
        ind += "    "
    emit(f"{ind}for r in range(nrows):")
    emit(f"{ind}    _epilogue(out, bias, res, (i0 + r) * N + c0, width, c0, has_bias, has_res)")
    emit("")
    return "\n".join(L)


def _gen_csc_source(mv: int, unroll: int, act: str | None) -> str:
    """Kernels for the unstructured form: `csc_kernel` (out^T = W^T a^T) and `finish_kernel`."""
    L = _header(f"csc MV={mv} U={unroll}", act)
    emit = L.append
    emit(f"MV = {mv}\nU = {unroll}\nMB = {16 * mv}\n")
    emit("@njit(cache=True, fastmath=True)")
    emit("def _column(at, vals, rows, p0, p1, ct, co, m0, MP):")
    for u in range(unroll):
        for v in range(mv):
            emit(f"    c{u}_{v} = vzero()")
    emit("    j = p0")
    emit("    while j + U <= p1:")
    for u in range(unroll):
        emit(f"        w{u} = vload_bcast(vals, j + {u})")
        emit(f"        ao{u} = iload(rows, j + {u}) * MP + m0")
        for v in range(mv):
            emit(f"        c{u}_{v} = vfma(w{u}, vload_a(at, ao{u} + {16 * v}), c{u}_{v})")
    emit("        j += U")
    emit("    while j < p1:")
    emit("        w0 = vload_bcast(vals, j)")
    emit("        ao0 = iload(rows, j) * MP + m0")
    for v in range(mv):
        emit(f"        c0_{v} = vfma(w0, vload_a(at, ao0 + {16 * v}), c0_{v})")
    emit("        j += 1")
    for v in range(mv):
        acc = f"c0_{v}"
        for u in range(1, unroll):
            acc = f"vadd({acc}, c{u}_{v})"
        emit(f"    vstore_a(ct, co + {16 * v}, {acc})")
    emit("")
    sig = ("void(float32[::1], float32[::1], int32[::1], int64[::1], float32[::1], int64, int64, int64, "
           "int64)")
    emit(f'@njit("{sig}", parallel=True, cache=True)')
    emit("def csc_kernel(at, vals, rows, ptr, ct, M, N, MP, nc):")
    emit("    n_mb = (M + MB - 1) // MB")
    emit("    n_nc = (N + nc - 1) // nc")
    emit("    for t in prange(n_mb * n_nc):")
    emit("        mb = t // n_nc")
    emit("        q = t - mb * n_nc")
    emit("        m0 = mb * MB")
    emit("        for n in range(q * nc, min(q * nc + nc, N)):")
    emit("            _column(at, vals, rows, ptr[n], ptr[n + 1], ct, n * MP + m0, m0, MP)")
    emit("")
    L += _epilogue_source(act)
    sig = ("void(float32[::1], float32[::1], float32[::1], float32[::1], int64, int64, int64, boolean, "
           "boolean)")
    emit(f'@njit("{sig}", parallel=True, cache=True)')
    emit("def finish_kernel(ct, out, bias, res, M, N, MP, has_bias, has_res):")
    emit("    NC = 256")
    emit("    n_mb = (M + 15) // 16")
    emit("    n_nc = (N + NC - 1) // NC")
    emit("    for t in prange(n_mb * n_nc):")
    emit("        mb = t // n_nc")
    emit("        c0 = (t - mb * n_nc) * NC")
    emit("        c1 = min(c0 + NC, N)")
    emit("        m0 = mb * 16")
    emit("        m1 = min(m0 + 16, M)")
    emit("        for n in range(c0, c1):")
    emit("            src = n * MP")
    emit("            for m in range(m0, m1):")
    emit("                out[m * N + n] = ct[src + m]")
    emit("        for m in range(m0, m1):")
    emit("            _epilogue(out, bias, res, m * N + c0, c1 - c0, c0, has_bias, has_res)")
    emit("")
    return "\n".join(L)


def _block_module(bw: int, act: str | None) -> ModuleType:
    mr = _BLOCK_MR[bw]
    return load_generated_once(f"sparse_block{bw}_{act or 'id'}", lambda: _gen_block_source(bw, mr, act))


def _csc_mv(m: int) -> int:
    return 1 if m <= 16 else 2 if m <= 32 else 4 if m <= 64 else 8


def _csc_module(mv: int, act: str | None) -> ModuleType:
    unroll = max(1, 8 // mv)
    return load_generated_once(f"sparse_csc{mv}_{act or 'id'}", lambda: _gen_csc_source(mv, unroll, act))


@njit(parallel=True, cache=True)
def _transpose_pad(a: np.ndarray, at: np.ndarray, m: int, k: int, mp: int) -> None:  # pragma: no cover
    """at[k, m] = a[m, k] for a [M, K] (flat), at [K, MP] (flat); rows m >= M of at set to 0."""
    n_kb = (k + 63) // 64
    for t in prange(n_kb):
        k0 = t * 64
        k1 = min(k0 + 64, k)
        for m0 in range(0, mp, 16):
            for kk in range(k0, k1):
                base = kk * mp
                for mm in range(m0, min(m0 + 16, mp)):
                    at[base + mm] = a[mm * k + kk] if mm < m else np.float32(0.0)


# ----------------------------------------------------------------------------------------------
# entry points


_EMPTY = np.zeros(16, dtype=np.float32)
_scratch = threading.local()


def _scratch_buffer(slot: str, size: int) -> np.ndarray:
    """A 64-byte aligned float32 buffer of at least `size`, reused per thread."""
    bufs = getattr(_scratch, "bufs", None)
    if bufs is None:
        bufs = _scratch.bufs = {}
    buf = bufs.get(slot)
    if buf is None or buf.size < size:
        buf = _aligned_empty((max(size, 16),))
        bufs[slot] = buf
    return buf


def warmup(weight: BlockSparse | CscSparse, activation: str | None = None, m: int = 128) -> None:
    """Generate and compile (or load from Numba's cache) the kernels `sparse_gemm` will use."""
    _check_activation(activation)
    if isinstance(weight, BlockSparse):
        _block_module(weight.bw, activation)
    else:
        _csc_module(_csc_mv(m), activation)


def sparse_gemm(a: np.ndarray, weight: BlockSparse | CscSparse, out: np.ndarray,
                bias: np.ndarray | None = None, activation: str | None = None,
                residual: np.ndarray | None = None) -> None:
    """out = act(a @ W + bias) + residual for a compressed constant W (same contract as `gemm`)."""
    ops = gemm_operands(a, weight.k, weight.n, out, bias, residual, activation)
    if ops is None:
        return
    k, n, m = weight.k, weight.n, ops.m
    a_f, out_f, bias_f, res_f, has_bias, has_res = ops.a, ops.out, ops.bias, ops.res, ops.has_bias, ops.has_res
    if k == 0:
        out_f[:] = 0.0
        if has_bias or has_res or activation is not None:
            _finish_dense_zero(out_f, bias_f, res_f, m, n, has_bias, has_res, activation)
        return
    with dynamic_tasks():
        if isinstance(weight, BlockSparse):
            kern = _block_module(weight.bw, activation).block_kernel
            mr = _BLOCK_MR[weight.bw]
            n_mt = -(-m // mr)
            tpb = max(1, min(n_mt, _L2_A_BUDGET // max(1, mr * k * 4)))
            n_cb = weight.ptr.size - 1
            while tpb > 1 and n_cb * -(-n_mt // tpb) < 4 * get_num_threads():
                tpb = -(-tpb // 2)
            kern(a_f, weight.values, weight.rows, weight.ptr, out_f, bias_f, res_f, m, k, n, tpb,
                 has_bias, has_res)
        else:
            mv = _csc_mv(m)
            mod = _csc_module(mv, activation)
            mp = -(-m // (16 * mv)) * 16 * mv
            at = _scratch_buffer("at", k * mp)
            ct = _scratch_buffer("ct", n * mp)
            _transpose_pad(a_f, at, m, k, mp)
            n_mb = mp // (16 * mv)
            nc = max(1, min(64, -(-n * n_mb // (8 * get_num_threads()))))
            nc = max(1, -(-n // max(1, -(-n // nc))))
            mod.csc_kernel(at, weight.values, weight.rows, weight.ptr, ct, m, n, mp, nc)
            mod.finish_kernel(ct, out_f, bias_f, res_f, m, n, mp, has_bias, has_res)


def _numpy_activation(name: str, x: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "gelu_tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _finish_dense_zero(out_f: np.ndarray, bias_f: np.ndarray, res_f: np.ndarray, m: int, n: int,
                       has_bias: bool, has_res: bool, activation: str | None) -> None:
    """K = 0: out = act(bias) + residual (rare; plain numpy)."""
    o = out_f.reshape(m, n)
    if has_bias:
        o += bias_f[:n]
    if activation is not None:
        o[...] = _numpy_activation(activation, o.astype(np.float64)).astype(np.float32)
    if has_res:
        o += res_f[: m * n].reshape(m, n)
