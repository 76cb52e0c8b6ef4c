"""Dense fp32 GEMM with fused epilogues, built on generated explicit-SIMD micro-kernels.

Constant weights (`pack_b`) are packed once into column panels of `NR` floats, zero-padded so that
every panel is full:

    packed[p, k, :] = b[k, p*NR : p*NR + NR]        (shape [ceil(N / NR), K, NR], 64-byte aligned)

`gemm` then runs a micro-kernel generated for the exact (K, N, MR, NR, activation): an MR x NR
register tile of SSA vector accumulators over the whole K, one `prange` task per (column panel,
block of row tiles), panel-major so that consecutive tasks of a thread reuse the B panel it holds in
L2. Row tails reuse the last valid row for the missing rows (never stored); column tails are masked
on store. The epilogue runs on the tile just written while it is in L1:

    out = act(a @ B + bias) + residual

with `act` in {None, "relu", "gelu_erf", "gelu_tanh"} (erf and tanh are float32 rational
approximations, |error| ~ 3e-7). `matmul` covers the non-constant case (batched activations, e.g.
attention) with a runtime-shape kernel that reads B in place.

Generated sources go through `codegen.load_generated`, so Numba's on-disk cache works for them; each
source embeds a hash of this file and of `simd.py`, so editing either starts a fresh cache entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numba import get_num_threads, njit

from sparsejit.kernels.codegen import load_generated_once
from sparsejit.kernels.simd import vbroadcast, verf, vfma, vmax, vmul, vtanh, vzero
from sparsejit.kernels.target import host_target
from sparsejit.kernels.threading import configure_threading, run_dynamic_tasks
from sparsejit.kernels.tiles import fma_tile, masked_store_tile, panel_driver, split_last_panel, zero_tile

__all__ = ["ACTIVATIONS", "PackedMatrix", "pack_b", "gemm", "bind_gemm", "matmul", "warmup", "default_tile"]

configure_threading()

ACTIVATIONS = (None, "relu", "gelu_erf", "gelu_tanh")
_TILE_AVX512 = (8, 48)  # (MR rows, NR columns): 24 zmm accumulators + 3 B vectors + 1 broadcast; 8 rows divide
# the M of usual buckets (batch x sequence, sequence a multiple of 8), where 6-row tiles waste up to 3 %
_TILE_AVX2 = (6, 16)  # 16 ymm registers: 12 accumulators (each 16-lane vector is two ymm) + 2 B + 1 broadcast
_L2_A_BUDGET = 384 * 1024  # bytes of A rows one task should touch (B panel + A block fit in L2)
_ALIGN = 64



def default_tile() -> tuple[int, int]:
    """(MR, NR) of the register tile for this process's target: sized to its vector register file."""
    return _TILE_AVX512 if host_target().avx512 else _TILE_AVX2


_DEPS = hashlib.sha1(
    b"".join(p.read_bytes() for p in (Path(__file__), Path(__file__).with_name("simd.py")))
).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------
# activations on vectors (imported by the generated modules)


@njit(inline="always", cache=True)
def _act_relu(v):  # type: ignore[no-untyped-def]
    return vmax(v, vzero())


@njit(inline="always", cache=True)
def _act_gelu_erf(v):  # type: ignore[no-untyped-def]
    # 0.5 * x * (1 + erf(x / sqrt(2)))
    h = vmul(v, vbroadcast(0.5))
    return vfma(h, verf(vmul(v, vbroadcast(0.7071067811865476))), h)


@njit(inline="always", cache=True)
def _act_gelu_tanh(v):  # type: ignore[no-untyped-def]
    # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
    h = vmul(v, vbroadcast(0.5))
    x2 = vmul(v, v)
    inner = vmul(vmul(v, vbroadcast(0.7978845608028654)), vfma(x2, vbroadcast(0.044715), vbroadcast(1.0)))
    return vfma(h, vtanh(inner), h)


_ACT_FN = {"relu": "_act_relu", "gelu_erf": "_act_gelu_erf", "gelu_tanh": "_act_gelu_tanh"}


# ----------------------------------------------------------------------------------------------
# packing


@dataclass(frozen=True)
class PackedMatrix:
    """A constant [K, N] weight packed into zero-padded NR-wide column panels."""

    data: np.ndarray  # float32 [n_panels, K, NR], C-contiguous, 64-byte aligned
    k: int
    n: int
    nr: int
    dtype: np.dtype

    @property
    def n_panels(self) -> int:
        return int(self.data.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.k, self.n)

    def unpack(self) -> np.ndarray:
        """Reconstruct the [K, N] float32 matrix (for tests and debugging)."""
        full = self.data.transpose(1, 0, 2).reshape(self.k, -1)
        return np.ascontiguousarray(full[:, : self.n])


def _aligned_empty(shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    dt = np.dtype(dtype)
    count = int(np.prod(shape))
    raw = np.empty(count * dt.itemsize + _ALIGN, dtype=np.uint8)
    start = (-raw.ctypes.data) % _ALIGN
    return raw[start : start + count * dt.itemsize].view(dt).reshape(shape)


def pack_b(b: np.ndarray, nr: int | None = None) -> PackedMatrix:
    """Pack a constant float32 [K, N] weight into NR-wide panels (NR a multiple of 16; default: the
    target's tile)."""
    nr = default_tile()[1] if nr is None else nr
    if b.ndim != 2:
        raise ValueError(f"pack_b expects a 2-D [K, N] weight, got shape {b.shape}")
    if nr % 16 or nr <= 0:
        raise ValueError(f"panel width must be a positive multiple of 16, got {nr}")
    k, n = (int(s) for s in b.shape)
    n_pan = max(1, -(-n // nr))
    data = _aligned_empty((n_pan, k, nr))
    full = n // nr
    if full:
        data[:full] = b[:, : full * nr].reshape(k, full, nr).transpose(1, 0, 2)
    if n_pan > full:
        data[full:] = 0.0
        rest = n - full * nr
        if rest:
            data[full, :, :rest] = b[:, full * nr :]
    return PackedMatrix(data=data, k=k, n=n, nr=nr, dtype=np.dtype(b.dtype))


# ----------------------------------------------------------------------------------------------
# code generation


def _gen_gemm_source(k: int, n: int, mr: int, nr: int, act: str | None) -> str:
    """Python source of a module with `gemm_kernel` specialised for (K, N, MR, NR, act)."""
    nv = nr // 16
    n_pan = max(1, -(-n // nr))
    last_w = n - (n_pan - 1) * nr  # valid columns of the last panel (1..NR)
    L: list[str] = []
    emit = L.append
    emit(f"# Generated by sparsejit.kernels.gemm: K={k} N={n} MR={mr} NR={nr} act={act} deps={_DEPS}")
    emit("from numba import njit, prange")
    emit("from sparsejit.kernels.simd import (vadd, vfma, vload_a, vload_bcast, vload_mask, vstore,"
         " vstore_mask, vzero)")
    if act is not None:
        emit(f"from sparsejit.kernels.gemm import {_ACT_FN[act]} as _act")
    emit("")
    emit(f"K = {k}\nN = {n}\nMR = {mr}\nNR = {nr}\nNPAN = {n_pan}\n")

    # --- micro-kernel: MR x NR tile over all of K, stores raw accumulators
    emit("@njit(cache=True, fastmath=True)")
    emit("def _micro(a, bp, out, i0, nrows, p, M):")
    for r in range(mr):
        emit(f"    ao{r} = min(i0 + {r}, M - 1) * K")
    emit("    bo = p * (K * NR)")
    L.extend(zero_tile(mr, nv, "    "))
    emit("    for k in range(K):")
    for v in range(nv):
        emit(f"        b{v} = vload_a(bp, bo + {16 * v})")
    L.extend(fma_tile(mr, nv, "        "))
    emit("        bo += NR")
    emit("    co = i0 * N + p * NR")

    def stores(indent: str, width: int) -> None:
        for r in range(mr):
            ind = indent
            if r > 0:
                emit(f"{indent}if nrows > {r}:")
                ind = indent + "    "
            for v in range(nv):
                lanes = min(16, width - 16 * v)
                if lanes <= 0:
                    continue
                if lanes == 16:
                    emit(f"{ind}vstore(out, co + {r * n + 16 * v}, c{r}_{v})")
                else:
                    emit(f"{ind}vstore_mask(out, co + {r * n + 16 * v}, c{r}_{v}, {lanes})")

    split_last_panel(stores, emit, nr, last_w, n_pan)
    emit("")

    # --- epilogue on the tile just stored: out = act(out + bias) + res
    emit("@njit(cache=True, fastmath=True)")
    emit("def _epilogue(out, bias, res, i0, nrows, c0, width, has_bias, has_res):")
    emit("    for r in range(nrows):")
    emit("        row = (i0 + r) * N + c0")
    emit("        for j in range(0, width, 16):")
    emit("            m = min(16, width - j)")
    emit("            v = vload_mask(out, row + j, m)")
    emit("            if has_bias:")
    emit("                v = vadd(v, vload_mask(bias, c0 + j, m))")
    if act is not None:
        emit("            v = _act(v)")
    emit("            if has_res:")
    emit("                v = vadd(v, vload_mask(res, row + j, m))")
    emit("            vstore_mask(out, row + j, v, m)")
    emit("")

    # --- parallel driver
    sig = "void(" + ", ".join(["float32[::1]"] * 5 + ["int64", "int64", "boolean", "boolean"]) + ")"
    epilogue = "_epilogue(out, bias, res, i0, nrows, c0, width, has_bias, has_res)"
    tile = "nrows = min(MR, M - i0)\n_micro(a, bp, out, i0, nrows, p, M)\n" + (
        epilogue if act is not None else "if has_bias or has_res:\n    " + epilogue)
    L.extend(panel_driver(sig, "def gemm_kernel(a, bp, out, bias, res, M, tpb, has_bias, has_res):", tile,
                          ("c0 = p * NR", "width = min(NR, N - c0)")))
    emit("")
    return "\n".join(L)


def _kernel(k: int, n: int, mr: int, nr: int, act: str | None) -> Any:
    return load_generated_once(f"gemm_k{k}_n{n}_{mr}x{nr}_{act or 'id'}",
                               lambda: _gen_gemm_source(k, n, mr, nr, act)).gemm_kernel


def warmup(packed: PackedMatrix, activation: str | None = None, mr: int | None = None) -> None:
    """Generate and compile (or load from cache) the kernel `gemm` will use for this weight."""
    _check_activation(activation)
    _kernel(packed.k, packed.n, default_tile()[0] if mr is None else mr, packed.nr, activation)


def _check_activation(activation: str | None) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {activation!r}; expected one of {ACTIVATIONS}")


_EMPTY = np.zeros(16, dtype=np.float32)


def _flat_f32(x: np.ndarray, name: str) -> np.ndarray:
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        raise ValueError(f"{name} must be a C-contiguous float32 array")
    return x.reshape(-1)


@dataclass(frozen=True)
class GemmOperands:
    """Flat float32 operands of out = act(a @ W + bias) + residual, validated (see `gemm_operands`)."""

    m: int
    a: np.ndarray
    out: np.ndarray
    bias: np.ndarray
    res: np.ndarray
    has_bias: bool
    has_res: bool


def gemm_operands(a: np.ndarray, k: int, n: int, out: np.ndarray, bias: np.ndarray | None,
                  residual: np.ndarray | None, activation: str | None) -> GemmOperands | None:
    """Check shapes and flatten the operands every GEMM kernel (dense, sparse) takes; None when the
    product is empty. A residual aliasing `out` is copied (out is written before it is read)."""
    _check_activation(activation)
    if a.shape[-1] != k:
        raise ValueError(f"a has K={a.shape[-1]}, weight has K={k}")
    m = a.size // k if k else int(np.prod(a.shape[:-1]))
    if out.shape[:-1] != a.shape[:-1] or out.shape[-1] != n:
        raise ValueError(f"out shape {out.shape} does not match a {a.shape} @ [{k}, {n}]")
    a_f = _flat_f32(np.ascontiguousarray(a, dtype=np.float32), "a")
    out_f = _flat_f32(out, "out")
    if m == 0 or n == 0:
        return None
    bias_f = _EMPTY
    if bias is not None:
        if bias.size != n:
            raise ValueError(f"bias has {bias.size} elements, expected {n}")
        bias_f = np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
    res_f = _EMPTY
    if residual is not None:
        if residual.size != m * n:
            raise ValueError(f"residual has {residual.size} elements, expected {m}x{n}")
        res_f = np.ascontiguousarray(residual, dtype=np.float32).reshape(-1)
        if np.may_share_memory(res_f, out_f):
            res_f = res_f.copy()
    if np.may_share_memory(a_f, out_f):
        raise ValueError("a must not overlap out")
    return GemmOperands(m, a_f, out_f, bias_f, res_f, bias is not None, residual is not None)


def gemm(
    a: np.ndarray,
    packed: PackedMatrix,
    out: np.ndarray,
    bias: np.ndarray | None = None,
    activation: str | None = None,
    residual: np.ndarray | None = None,
    mr: int | None = None,
) -> None:
    """out = act(a @ B + bias) + residual, written into `out` (float32, C-contiguous).

    `a` is [..., K] (leading dims flattened to M rows), `out` and `residual` are [..., N] with the
    same leading dims; `bias` is [N]. `residual` may alias `out` (it is then copied first); `a` must
    not overlap `out`. K = 0 gives act(bias) + residual. `mr`: rows per register tile (default:
    the target's).
    """
    mr = default_tile()[0] if mr is None else mr
    ops = gemm_operands(a, packed.k, packed.n, out, bias, residual, activation)
    if ops is None:
        return
    k, n, m = packed.k, packed.n, ops.m
    a_f, out_f, bias_f, res_f, has_bias, has_res = ops.a, ops.out, ops.bias, ops.res, ops.has_bias, ops.has_res
    kernel = _kernel(k, n, mr, packed.nr, activation)
    run_dynamic_tasks(kernel, a_f, packed.data.reshape(-1), out_f, bias_f, res_f, m,
                      tiles_per_block(m, 4 * k, mr, packed.n_panels), has_bias, has_res)


def bind_gemm(a: np.ndarray, packed: PackedMatrix, out: np.ndarray, bias: np.ndarray | None = None,
              activation: str | None = None, residual: np.ndarray | None = None,
              mr: int | None = None) -> Callable[[], None]:
    """`gemm` with its operands fixed: checks, views and kernel lookup done once, here.

    Returns `run()`, which reads the current contents of `a` (and `residual`) and writes `out`. When
    an operand would need a copy at every call (not C-contiguous float32, or a residual aliasing
    `out`), `run` is plain `gemm` on the same operands.
    """
    mr = default_tile()[0] if mr is None else mr
    ops = gemm_operands(a, packed.k, packed.n, out, bias, residual, activation)
    if ops is None:
        return lambda: None
    views = all(x is None or (x.dtype == np.float32 and x.flags.c_contiguous) for x in (a, bias, residual))
    if not views or (residual is not None and np.may_share_memory(residual, out)):
        return lambda: gemm(a, packed, out, bias, activation, residual, mr)
    kernel = _kernel(packed.k, packed.n, mr, packed.nr, activation)
    data, tpb = packed.data.reshape(-1), tiles_per_block(ops.m, 4 * packed.k, mr, packed.n_panels)

    def run() -> None:
        run_dynamic_tasks(kernel, ops.a, data, ops.out, ops.bias, ops.res, ops.m, tpb, ops.has_bias, ops.has_res)

    return run


def tiles_per_block(m: int, row_bytes: int, mr: int, n_panels: int, budget: int = _L2_A_BUDGET) -> int:
    """Row tiles per task of a panel-major GEMM: the A block (MR-row tiles of `row_bytes` each row)
    within an L2 `budget`, enough tasks to balance 2+ threads, and equal blocks."""
    n_mt = -(-m // mr)
    tpb = max(1, min(n_mt, budget // max(1, mr * row_bytes)))
    want_tasks = 4 * get_num_threads()
    while tpb > 1 and n_panels * (-(-n_mt // tpb)) < want_tasks:
        tpb = -(-tpb // 2)
    return -(-n_mt // -(-n_mt // tpb))  # the same number of tiles in every block


# ----------------------------------------------------------------------------------------------
# matmul of two activations (batched), runtime shapes

def _matmul_tile() -> tuple[int, int]:
    """(rows, 16-lane vectors) of the batched matmul's tile: 12 accumulators in zmm, 6 (12 ymm) on AVX2."""
    return (6, 2) if host_target().avx512 else (6, 1)


def _gen_matmul_source(mr: int, nv: int) -> str:
    L: list[str] = []
    emit = L.append
    emit(f"# Generated by sparsejit.kernels.gemm: batched matmul MR={mr} NV={nv} deps={_DEPS}")
    emit("from numba import njit, prange")
    emit("from sparsejit.kernels.simd import vfma, vzero, vload_mask, vload_bcast, vstore_mask")
    emit("")
    emit("@njit(cache=True, fastmath=True)")
    emit("def _micro(a, b, out, ab, bb, ob, M, K, N, i0, j0):")
    emit("    nrows = min(" + str(mr) + ", M - i0)")
    for r in range(mr):
        emit(f"    ao{r} = ab + min(i0 + {r}, M - 1) * K")
    for v in range(nv):
        emit(f"    m{v} = max(0, min(16, N - j0 - {16 * v}))")
    L.extend(zero_tile(mr, nv, "    "))
    emit("    bo = bb + j0")
    emit("    for k in range(K):")
    for v in range(nv):
        emit(f"        b{v} = vload_mask(b, bo + {16 * v}, m{v})")
    L.extend(fma_tile(mr, nv, "        "))
    emit("        bo += N")
    L.extend(masked_store_tile(mr, nv, lambda r, v: f"ob + (i0 + {r}) * N + j0 + {16 * v}", "    "))
    emit("")
    sig = "void(float32[::1], float32[::1], float32[::1], int64, int64, int64, int64, int64)"
    emit(f'@njit("{sig}", parallel=True, cache=True)')
    emit("def matmul_kernel(a, b, out, B, M, K, N, tiles_per_task):")
    emit("    # a task is `tiles_per_task` consecutive row tiles (of any batch), each across all of N")
    emit(f"    n_mt = (M + {mr - 1}) // {mr}")
    emit(f"    n_nt = (N + {16 * nv - 1}) // {16 * nv}")
    emit("    total = B * n_mt")
    emit("    for t in prange((total + tiles_per_task - 1) // tiles_per_task):")
    emit("        for g in range(t * tiles_per_task, min(total, (t + 1) * tiles_per_task)):")
    emit("            bi = g // n_mt")
    emit("            mt = g - bi * n_mt")
    emit("            for jt in range(n_nt):")
    emit(f"                _micro(a, b, out, bi * M * K, bi * K * N, bi * M * N, M, K, N, mt * {mr}, jt * {16 * nv})")
    emit("")
    return "\n".join(L)


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """Batched out[..., M, N] = a[..., M, K] @ b[..., K, N] for float32 activations.

    Leading (batch) dims of `a`, `b` and `out` must be equal (no broadcasting); inputs that are not
    C-contiguous are copied. `out` must be C-contiguous float32 and must not overlap the inputs.
    """
    if a.ndim < 2 or b.ndim != a.ndim or out.ndim != a.ndim:
        raise ValueError("matmul expects a, b, out with the same rank >= 2")
    if a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul shape mismatch: {a.shape} @ {b.shape}")
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    if out.shape != a.shape[:-1] + (n,):
        raise ValueError(f"out shape {out.shape} != {a.shape[:-1] + (n,)}")
    out_f = _flat_f32(out, "out")
    batch = int(np.prod(a.shape[:-2]))
    if out_f.size == 0:
        return
    if k == 0:
        out_f[:] = 0.0
        return
    a_f = np.ascontiguousarray(a, dtype=np.float32).reshape(-1)
    b_f = np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
    mr, nv = _matmul_tile()
    kernel = load_generated_once(f"matmul_{mr}x{16 * nv}", lambda: _gen_matmul_source(mr, nv)).matmul_kernel
    row_tiles = batch * -(-m // mr)
    per_task = max(1, row_tiles // (8 * get_num_threads()))  # ~8 tasks a thread: balanced, little hand-out
    run_dynamic_tasks(kernel, a_f, b_f, out_f, batch, m, k, n, per_task)
