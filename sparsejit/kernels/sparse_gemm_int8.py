"""Block-sparse int8 GEMM on AVX-512 VNNI, with the epilogue contract of `gemm_int8.qgemm` (float out).

A constant 8-bit weight W [K, N] (symmetric: zero point 0, so a pruned weight is exactly 0) is cut
into 4 x BW blocks: 4 consecutive k (one `vpdpbusd` group) by BW consecutive output columns, BW in
{16, 32, 64}. Per column block the k-groups whose 4 x BW slab is not all zero are listed, and their
bytes stored in the layout `vpdpbusd` consumes (``[BW columns][4 k]`` per block, 64-byte aligned).
The kernel is the dense VNNI micro-kernel with the zero groups skipped: an MR x BW tile of int32
accumulators; per listed group it broadcasts 4 activation bytes of each of the MR rows and runs
`vpdpbusd` against the block's BW/16 vectors. Every 4-row block along K holds VNNI's 4 bytes of one
lane, so 4 x BW is the finest structure that keeps the vector lanes along N.

Activations come quantised to uint8 [M, KP] (`gemm_int8.quantize_rows`); the epilogue dequantises
with the per-column `comp`/`scale` vectors of `gemm_int8.epilogue_vectors` and applies bias,
activation and residual while the tile is in registers. The dense weight is not kept.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numba import get_num_threads

from sparsejit.kernels.codegen import load_generated_once
from sparsejit.kernels.gemm import _ACT_FN, ACTIVATIONS, _aligned_empty
from sparsejit.kernels.simd_int8 import fake_quant_vector
from sparsejit.kernels.threading import configure_threading, run_dynamic_tasks
from sparsejit.kernels.tiles import activation_call, activation_import, dequantize_add_bias

__all__ = ["BlockSparseInt8", "INT8_BLOCK_WIDTHS", "block_sparse_int8", "block_qgemm"]

configure_threading()

INT8_BLOCK_WIDTHS = (16, 32, 64)
_BLOCK_MR = {16: 8, 32: 6, 64: 6}  # rows per register tile: 8-24 int32 accumulators
_L2_A_BUDGET = 256 * 1024
_L2_W_BUDGET = 128 * 1024
_HERE = Path(__file__)
_DEPS = hashlib.sha1(b"".join(p.read_bytes() for p in (
    _HERE, _HERE.with_name("simd.py"), _HERE.with_name("simd_int8.py"), _HERE.with_name("gemm.py"),
    _HERE.with_name("sparse_gemm.py")))).hexdigest()[:12]


@dataclass(frozen=True)
class BlockSparseInt8:
    """W [K, N] int8 as 4 x BW blocks: per column block, the non-zero k-groups and their bytes."""

    ptr: np.ndarray  # int64 [n_cb + 1]: blocks of column block c are ptr[c]:ptr[c+1]
    groups: np.ndarray  # int32 [nnzb]: k-group g of each block (k = 4g .. 4g+3)
    values: np.ndarray  # int8 [nnzb * BW * 4], 64-byte aligned; byte (j*BW + col)*4 + b = w[4g+b, c0+col]
    k: int
    kp: int
    n: int
    bw: int

    @property
    def nnz_blocks(self) -> int:
        return int(self.groups.size)

    @property
    def density(self) -> float:
        """Fraction of the (KP / 4) x ceil(N / BW) blocks that are stored."""
        return self.nnz_blocks / max(1, (self.kp // 4) * (self.ptr.size - 1))

    @property
    def nbytes(self) -> int:
        return int(self.ptr.nbytes + self.groups.nbytes + self.values.nbytes)

    def to_dense(self) -> np.ndarray:
        """Reconstruct the signed [K, N] int8 matrix (for tests)."""
        n_cb = self.ptr.size - 1
        full = np.zeros((self.kp // 4, n_cb * self.bw, 4), dtype=np.int8)
        vals = self.values[: self.nnz_blocks * self.bw * 4].reshape(-1, self.bw, 4)
        for c in range(n_cb):
            s, e = self.ptr[c], self.ptr[c + 1]
            full[self.groups[s:e], c * self.bw:(c + 1) * self.bw] = vals[s:e]
        return full.transpose(0, 2, 1).reshape(self.kp, -1)[: self.k, : self.n]


def block_sparse_int8(w_s8: np.ndarray, bw: int = 16) -> BlockSparseInt8:
    """Compress a signed int8 [K, N] weight (zero point 0) into 4 x `bw` blocks (all-zero blocks dropped)."""
    if bw not in INT8_BLOCK_WIDTHS:
        raise ValueError(f"block width must be one of {INT8_BLOCK_WIDTHS}, got {bw}")
    if w_s8.ndim != 2 or w_s8.dtype != np.int8:
        raise ValueError(f"expected a 2-D int8 weight, got {w_s8.dtype} {w_s8.shape}")
    k, n = (int(s) for s in w_s8.shape)
    kp = 4 * max(1, -(-k // 4))
    n_cb = max(1, -(-n // bw))
    padded = np.zeros((kp, n_cb * bw), dtype=np.int8)
    padded[:k, :n] = w_s8
    blocks = padded.reshape(kp // 4, 4, n_cb, bw).transpose(2, 0, 3, 1)  # [n_cb, G, BW, 4]
    keep = np.any(blocks != 0, axis=(2, 3))  # [n_cb, G]
    ptr = np.zeros(n_cb + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=ptr[1:])
    cb_idx, groups = np.nonzero(keep)  # grouped by column block, g ascending
    values = _aligned_empty((max(1, groups.size) * bw * 4,), np.int8)
    values[:] = 0
    values[: groups.size * bw * 4] = blocks[cb_idx, groups].reshape(-1)
    return BlockSparseInt8(ptr=ptr, groups=groups.astype(np.int32), values=values, k=k, kp=kp, n=n, bw=bw)


# ----------------------------------------------------------------------------------------------
# code generation


def _gen_source(bw: int, mr: int, act: str | None, fake_quant: bool = False) -> str:
    """`fake_quant`: the float epilogue rounds to the grids of its `fq` argument (`tiles.dequantize_add_bias`)."""
    nv = bw // 16
    L: list[str] = []
    emit = L.append
    emit(f"# Generated by sparsejit.kernels.sparse_gemm_int8: block 4x{bw} MR={mr} act={act} "
         f"fake_quant={fake_quant} deps={_DEPS}")
    emit("from numba import njit, prange")
    emit("from sparsejit.kernels.simd import vadd, vcvt_i2f, vdpbusd, vfma, viload, vizero, vload, vload_mask,"
         " vmul, vstore_mask")
    emit("from sparsejit.kernels.simd_int8 import vfake_quant, vload_bcast4, visub")
    emit("from sparsejit.kernels.sparse_gemm import iload")
    if act is not None:
        emit(activation_import(act, fake_quant, _ACT_FN[act]))
    emit("")
    emit(f"BW = {bw}\nMR = {mr}\n")
    emit("@njit(cache=True, fastmath=True)")
    emit("def _tile(a, vals, groups, p0, p1, out, comp, scale, bias, res, i0, nrows, c0, width, M, KP, N,"
         " has_res, fq):")
    for r in range(mr):
        emit(f"    ao{r} = min(i0 + {r}, M - 1) * KP")
    for r in range(mr):
        for v in range(nv):
            emit(f"    c{r}_{v} = vizero()")
    emit("    for j in range(p0, p1):")
    emit("        g4 = iload(groups, j) * 4")
    emit(f"        vo = j * {bw * 4}")
    for v in range(nv):
        emit(f"        b{v} = viload(vals, vo + {64 * v})")
    for r in range(mr):
        emit(f"        a{r} = vload_bcast4(a, ao{r} + g4)")
        for v in range(nv):
            emit(f"        c{r}_{v} = vdpbusd(c{r}_{v}, a{r}, b{v})")
    for v in range(nv):
        emit(f"    m{v} = max(0, min(16, width - {16 * v}))")
        emit(f"    k{v} = viload(comp, c0 + {16 * v})")
        emit(f"    s{v} = vload(scale, c0 + {16 * v})")
        emit(f"    e{v} = vload(bias, c0 + {16 * v})")
    for r in range(mr):
        ind = "    "
        if r > 0:
            emit(f"    if nrows > {r}:")
            ind = "        "
        emit(f"{ind}row = (i0 + {r}) * N + c0")
        for v in range(nv):
            emit(f"{ind}x = visub(c{r}_{v}, k{v})")
            L.extend(dequantize_add_bias("x", f"s{v}", f"e{v}", ind, fake_quant))
            if act is not None:
                emit(f"{ind}f = {activation_call(act, fake_quant)}")
            emit(f"{ind}if has_res:")
            emit(f"{ind}    f = vadd(f, vload_mask(res, row + {16 * v}, m{v}))")
            if fake_quant:
                emit(f"{ind}f = vfake_quant(f, fq, 2)")
            emit(f"{ind}vstore_mask(out, row + {16 * v}, f, m{v})")
    emit("")
    sig = ("void(uint8[::1], int8[::1], int32[::1], int64[::1], float32[::1], int32[::1], float32[::1], "
           "float32[::1], float32[::1], int64, int64, int64, int64, int64, boolean, float32[::1])")
    emit(f'@njit("{sig}", parallel=True, cache=True)')
    emit("def block_qgemm_kernel(a, vals, groups, ptr, out, comp, scale, bias, res, M, KP, N, tpb, cpt,"
         " has_res, fq):")
    emit("    n_cb = (N + BW - 1) // BW")
    emit("    n_cc = (n_cb + cpt - 1) // cpt")
    emit("    n_mt = (M + MR - 1) // MR")
    emit("    n_mb = (n_mt + tpb - 1) // tpb")
    # a task is (block of row tiles, chunk of column blocks); column blocks innermost, so the MR
    # activation rows of a tile stay in L1 while every column block of the chunk reads them
    emit("    for t in prange(n_mb * n_cc):")
    emit("        mb = t // n_cc")
    emit("        cc = t - mb * n_cc")
    emit("        for mt in range(mb * tpb, min(mb * tpb + tpb, n_mt)):")
    emit("            i0 = mt * MR")
    emit("            nrows = min(MR, M - i0)")
    emit("            for cb in range(cc * cpt, min(cc * cpt + cpt, n_cb)):")
    emit("                c0 = cb * BW")
    emit("                _tile(a, vals, groups, ptr[cb], ptr[cb + 1], out, comp, scale, bias, res, i0, nrows, c0,"
         " min(BW, N - c0), M, KP, N, has_res, fq)")
    emit("")
    return "\n".join(L)


def _kernel(bw: int, mr: int, act: str | None, fake_quant: bool = False) -> Any:
    return load_generated_once(f"block_qgemm_4x{bw}_{mr}_{act or 'id'}{'_fq' if fake_quant else ''}",
                               lambda: _gen_source(bw, mr, act, fake_quant)).block_qgemm_kernel


@functools.lru_cache(maxsize=4096)
def _task_shape(m: int, kp: int, mr: int, n_cb: int, cb_bytes: int, threads: int) -> tuple[int, int]:
    """(row tiles, column blocks) per task: the chunk's blocks within an L2 budget, A rows within
    another, and enough tasks to balance the threads."""
    n_mt = -(-m // mr)
    cpt = max(1, min(n_cb, _L2_W_BUDGET // max(1, cb_bytes)))
    tpb = max(1, min(n_mt, _L2_A_BUDGET // max(1, mr * kp)))
    want = 4 * threads
    while (-(-n_mt // tpb)) * (-(-n_cb // cpt)) < want and (tpb > 1 or cpt > 1):
        if tpb >= cpt and tpb > 1 or cpt == 1:
            tpb = -(-tpb // 2)
        else:
            cpt = -(-cpt // 2)
    tpb = -(-n_mt // -(-n_mt // tpb))  # the same number of tiles in every block
    cpt = -(-n_cb // -(-n_cb // cpt))
    return tpb, cpt


_EMPTY_F = np.zeros(16, dtype=np.float32)
_NO_FAKE_QUANT = fake_quant_vector(None)


def _padded(v: np.ndarray, size: int) -> np.ndarray:
    if v.size >= size:
        return v
    out = np.zeros(size, v.dtype)
    out[: v.size] = v
    return out


def block_qgemm(a_q: np.ndarray, weight: BlockSparseInt8, out: np.ndarray, comp: np.ndarray, scale: np.ndarray,
                bias: np.ndarray | None = None, activation: str | None = None,
                residual: np.ndarray | None = None, fake_quant: np.ndarray | None = None) -> None:
    """out = act(float(a_q @ W - comp) * scale + bias) + residual, W block-sparse int8 (float32 out);
    `fake_quant` (float32, `simd_int8.fake_quant_params`): rounded as `gemm_int8.bind_qgemm`'s.

    `a_q` is uint8 [M, KP]; `comp` (int32), `scale` and `bias` (float32) are per-column vectors of at
    least N entries (`gemm_int8.epilogue_vectors` / `pad_columns` give them), zero-padded here to whole
    column blocks when shorter.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {activation!r}")
    m = a_q.shape[0]
    if a_q.dtype != np.uint8 or a_q.shape[1] != weight.kp:
        raise ValueError(f"a_q must be uint8 [M, {weight.kp}], got {a_q.dtype} {a_q.shape}")
    if out.dtype != np.float32 or out.size != m * weight.n:
        raise ValueError(f"out must be float32 with {m}x{weight.n} elements")
    n_cb = weight.ptr.size - 1
    pad = n_cb * weight.bw
    comp, scale = _padded(comp, pad), _padded(scale, pad)
    bias_f = _padded(np.zeros(0, np.float32) if bias is None else np.ascontiguousarray(bias, np.float32).reshape(-1),
                     pad)
    if m == 0 or weight.n == 0:
        return
    res_f = _EMPTY_F if residual is None else np.ascontiguousarray(residual, dtype=np.float32).reshape(-1)
    if residual is not None and np.may_share_memory(res_f, out):
        res_f = res_f.copy()
    mr = _BLOCK_MR[weight.bw]
    kernel = _kernel(weight.bw, mr, activation, fake_quant is not None)
    fq = _NO_FAKE_QUANT if fake_quant is None else fake_quant_vector(fake_quant)
    run_dynamic_tasks(kernel, a_q.reshape(-1), weight.values, weight.groups, weight.ptr, out.reshape(-1), comp, scale,
                      bias_f, res_f, m, weight.kp, weight.n,
                      *_task_shape(m, weight.kp, mr, n_cb, weight.values.nbytes // max(1, n_cb), get_num_threads()),
                      residual is not None, fq)
