"""bf16-weight GEMM on AVX512-BF16 (`vdpbf16ps`), float32 accumulation, with the fp32 GEMM's epilogue.

    out = act(bf16(a) @ bf16(W) + bias) + residual          (float32 in and out)

The constant weight is rounded once to bf16 (nearest, ties to even) and packed into NR-column panels
with K in pairs, the layout `vdpbf16ps` consumes (one 32-bit lane = the bf16 pair w[2g, n], w[2g+1, n]):
half the bytes of the fp32 panels. Activations are rounded to bf16 pairs per call (`to_bf16_rows`).
Each `vdpbf16ps` does two multiply-adds per lane, so a tile does twice the work of an fp32 FMA per
instruction; products are exact in float32 and summed in float32, so the error is that of rounding
the two operands to 8-bit mantissas (relative ~2^-9 per operand), not of the accumulation.

Micro-kernels are generated per (K, N, MR, NR, activation) into the kernel cache like `gemm.py`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, prange

from sparsejit.kernels.codegen import load_generated_once
from sparsejit.kernels.gemm import _ACT_FN, _aligned_empty, gemm_operands, tiles_per_block
from sparsejit.kernels.threading import configure_threading, run_dynamic_tasks
from sparsejit.kernels.tiles import activate_add_store, group4_dot_tile, panel_driver, split_last_panel

__all__ = ["PackedBF16", "pack_b_bf16", "bgemm", "to_bf16", "to_bf16_rows", "DEFAULT_TILE_BF16"]

configure_threading()

DEFAULT_TILE_BF16 = (8, 48)
_HERE = Path(__file__)
_DEPS = hashlib.sha1(b"".join(p.read_bytes() for p in (
    _HERE, _HERE.with_name("simd.py"), _HERE.with_name("simd_int8.py"), _HERE.with_name("gemm.py")))
).hexdigest()[:12]


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), rounded to nearest, ties to even; NaN stays NaN."""
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    out = np.empty(flat.size, np.uint16)
    _to_bf16_rows_kernel(flat, out, 1, flat.size, flat.size)
    return out.reshape(np.shape(x))


@dataclass(frozen=True)
class PackedBF16:
    """A constant [K, N] weight as bf16, packed for `vdpbf16ps`: uint16 [n_panels, KP/2, NR, 2]."""

    data: np.ndarray  # uint8 view of the packed uint16 panels, 64-byte aligned
    k: int
    kp: int  # K rounded up to even
    n: int
    nr: int

    @property
    def n_panels(self) -> int:
        return -(-self.n // self.nr)

    def unpack(self) -> np.ndarray:
        """The [K, N] float32 values of the bf16 weight (for tests)."""
        d = self.data.view(np.uint16).reshape(self.n_panels, self.kp // 2, self.nr, 2).transpose(1, 3, 0, 2)
        w = d.reshape(self.kp, self.n_panels * self.nr)[: self.k, : self.n]
        return (w.astype(np.uint32) << np.uint32(16)).view(np.float32)


def pack_b_bf16(w: np.ndarray, nr: int = DEFAULT_TILE_BF16[1]) -> PackedBF16:
    """Round a float32 [K, N] weight to bf16 and pack it into NR-wide panels of K pairs."""
    if w.ndim != 2:
        raise ValueError(f"pack_b_bf16 expects a 2-D [K, N] weight, got shape {w.shape}")
    if nr % 16 or nr <= 0:
        raise ValueError(f"panel width must be a positive multiple of 16, got {nr}")
    k, n = (int(s) for s in w.shape)
    kp = 2 * max(1, -(-k // 2))
    n_pan = max(1, -(-n // nr))
    full = np.zeros((kp, n_pan * nr), dtype=np.uint16)
    full[:k, :n] = to_bf16(w)
    data = _aligned_empty((n_pan * kp * nr * 2,), np.uint8)
    data.view(np.uint16)[:] = full.reshape(kp // 2, 2, n_pan, nr).transpose(2, 0, 3, 1).reshape(-1)
    return PackedBF16(data=data, k=k, kp=kp, n=n, nr=nr)


@njit(parallel=True, cache=True, fastmath=True)
def _to_bf16_rows_kernel(x, out, M, K, KP):  # type: ignore[no-untyped-def]
    # branch-free with uint32 constants throughout, so LLVM vectorises the row loop (8x the scalar form)
    xu = x.view(np.uint32)
    one, s16, half = np.uint32(1), np.uint32(16), np.uint32(0x7FFF)
    magnitude, inf, quiet_bit = np.uint32(0x7FFFFFFF), np.uint32(0x7F800000), np.uint32(0x40)
    for r in prange(M):
        src = xu[r * K:(r + 1) * K]
        dst = out[r * KP:r * KP + K]
        for j in range(K):
            u = src[j]
            rounded = (u + half + ((u >> s16) & one)) >> s16  # nearest, ties to even
            nan = (u >> s16) | quiet_bit
            dst[j] = np.uint16(nan if (u & magnitude) > inf else rounded)
        for j in range(K, KP):
            out[r * KP + j] = 0


def to_bf16_rows(a: np.ndarray, out: np.ndarray) -> None:
    """Round float32 rows [M, K] (C-contiguous, flat) into the bf16 scratch `out` (uint16 [M, KP])."""
    m, kp = out.shape
    _to_bf16_rows_kernel(a.reshape(-1), out.reshape(-1), m, a.size // max(1, m), kp)


# ----------------------------------------------------------------------------------------------
# code generation


def _gen_source(k: int, n: int, mr: int, nr: int, act: str | None) -> str:
    nv = nr // 16
    kp = 2 * max(1, -(-k // 2))
    n_pan = max(1, -(-n // nr))
    last_w = n - (n_pan - 1) * nr
    L: list[str] = []
    emit = L.append
    emit(f"# Generated by sparsejit.kernels.gemm_bf16: K={k} N={n} MR={mr} NR={nr} act={act} deps={_DEPS}")
    emit("from numba import njit, prange")
    emit("from sparsejit.kernels.simd import vadd, vdpbf16ps, viload, vload_mask, vstore, vstore_mask, vzero")
    emit("from sparsejit.kernels.simd_int8 import vload_bcast4")
    if act is not None:
        emit(f"from sparsejit.kernels.gemm import {_ACT_FN[act]} as _act")
    emit("")
    emit(f"K = {k}\nKP = {kp}\nN = {n}\nMR = {mr}\nNR = {nr}\nNPAN = {n_pan}\n")
    emit("@njit(cache=True, fastmath=True)")
    emit("def _tile(a, bp, out, bias, res, i0, nrows, p, M, has_bias, has_res):")
    L.extend(group4_dot_tile(mr, nv, nr, "(KP * 2)", "KP // 2", "vzero()", "vdpbf16ps"))
    emit("    cb = p * NR")

    def body(indent: str, width: int) -> None:
        for v in range(nv):
            lanes = min(16, width - 16 * v)
            if lanes > 0:  # the bias is a 16-float dummy when has_bias is False: never read past it
                emit(f"{indent}e{v} = vzero()")
                emit(f"{indent}if has_bias:")
                emit(f"{indent}    e{v} = vload_mask(bias, cb + {16 * v}, {lanes})")
        for r in range(mr):
            ind = indent
            if r > 0:
                emit(f"{indent}if nrows > {r}:")
                ind = indent + "    "
            emit(f"{ind}row = (i0 + {r}) * N + cb")
            for v in range(nv):
                lanes = min(16, width - 16 * v)
                if lanes <= 0:
                    continue
                emit(f"{ind}f = c{r}_{v}")
                emit(f"{ind}if has_bias:")
                emit(f"{ind}    f = vadd(f, e{v})")
                L.extend(activate_add_store(act, v, lanes, ind))

    split_last_panel(body, emit, nr, last_w, n_pan)
    emit("")
    sig = ("void(uint8[::1], uint8[::1], float32[::1], float32[::1], float32[::1], int64, int64, boolean, "
           "boolean)")
    L.extend(panel_driver(sig, "def bgemm_kernel(a, bp, out, bias, res, M, tpb, has_bias, has_res):",
                          "_tile(a, bp, out, bias, res, i0, min(MR, M - i0), p, M, has_bias, has_res)"))
    emit("")
    return "\n".join(L)


def _kernel(k: int, n: int, mr: int, nr: int, act: str | None) -> Any:
    return load_generated_once(f"bgemm_k{k}_n{n}_{mr}x{nr}_{act or 'id'}",
                               lambda: _gen_source(k, n, mr, nr, act)).bgemm_kernel


def bgemm(a: np.ndarray, packed: PackedBF16, out: np.ndarray, bias: np.ndarray | None = None,
          activation: str | None = None, residual: np.ndarray | None = None,
          mr: int = DEFAULT_TILE_BF16[0], scratch: np.ndarray | None = None) -> None:
    """out = act(bf16(a) @ W + bias) + residual: the contract of `gemm.gemm`, with a bf16 weight.

    `scratch` (uint16 [M, KP]) receives the bf16 activations; a caller running the same shape again
    passes one so no buffer is allocated per call.
    """
    ops = gemm_operands(a, packed.k, packed.n, out, bias, residual, activation)
    if ops is None:
        return
    shape = (ops.m, packed.kp)
    a_bf = scratch if scratch is not None and scratch.shape == shape else np.empty(shape, np.uint16)
    to_bf16_rows(ops.a, a_bf)
    kernel = _kernel(packed.k, packed.n, mr, packed.nr, activation)
    run_dynamic_tasks(kernel, a_bf.reshape(-1).view(np.uint8), packed.data, ops.out, ops.bias, ops.res, ops.m,
                      tiles_per_block(ops.m, 2 * packed.kp, mr, packed.n_panels), ops.has_bias, ops.has_res)
