"""int8 GEMM on AVX-512 VNNI (`vpdpbusd`: u8 x s8 -> s32), with vectorised quantisers.

Notation: activations `a` are uint8 (an int8 tensor is shifted by +128 and its zero point with it),
weights `w` int8 (a uint8 weight is shifted by -128 at packing, its zero point with it). With zero
points `za` (scalar) and `zw[n]` (per column, usually 0), the exact integer product is

    sum_k (a[m,k] - za)(w[k,n] - zw[n])
        = acc[m,n] - za*colsum[n] - zw[n]*rowsum[m] + K*za*zw[n],     acc = sum_k a*w (vpdpbusd)

so the kernel accumulates `acc` and the epilogue subtracts `comp[n] = za*colsum[n] - K*za*zw[n]`
(and `zw[n]*rowsum[m]` only when some zw != 0), then dequantises and applies the fused epilogue:

    out = act(float(acc - comp - zw*rowsum) * scale[n] + bias[n]) + residual       (float32 out)
    out = clamp(rint(float(acc - comp - zw*rowsum) * scale[n]) + zy, qlo, qhi)       (8-bit out)

with `scale[n] = scale_a * scale_w[n]` (divided by the output scale for 8-bit output).

Weights are packed once (`pack_b_int8`) into NR-column panels with K in groups of 4 bytes, the
layout `vpdpbusd` consumes: byte `((p*KP/4 + g)*NR + j)*4 + b` holds w[4g+b, p*NR+j] (K padded to
KP = 4*ceil(K/4) and N to whole panels with zeros). Activations are quantised (or converted) into a
[M, KP] uint8 scratch by the quantisers of `kernels.quantize` (re-exported here).

Micro-kernels are generated per (K, N, MR, NR, activation, output kind) into the kernel cache like
`gemm.py`: an MR x NR tile of int32 accumulators kept in zmm registers over all of K.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

from sparsejit.kernels.codegen import load_generated_once
from sparsejit.kernels.gemm import _ACT_FN, ACTIVATIONS, _aligned_empty, default_tile, tiles_per_block
from sparsejit.kernels.gemm_amx import AMX_MR, AMX_NR, amx_kernel, amx_tile_configs
from sparsejit.kernels.quantize import convert_rows, dynamic_quantize_rows, quantize_rows
from sparsejit.kernels.simd_amx import amx_usable, require_amx
from sparsejit.kernels.simd_int8 import fake_quant_vector
from sparsejit.kernels.streaming import streams_output
from sparsejit.kernels.threading import configure_threading, run_dynamic_tasks
from sparsejit.kernels.tiles import (
    activation_import,
    deferred_tail,
    epilogue_setup,
    group4_dot_tile,
    panel_driver,
    row_epilogue,
    split_last_panel,
)

__all__ = ["PackedInt8", "pack_b_int8", "qgemm", "quantize_rows", "dynamic_quantize_rows", "convert_rows",
           "default_tile_int8", "epilogue_vectors", "bind_epilogue_vectors", "pad_columns", "bind_qgemm"]

configure_threading()


def default_tile_int8() -> tuple[int, int]:
    """(MR, NR) of the int8 register tile: as the fp32 GEMM's (8 x 48 in zmm; 6 x 16 in ymm on AVX2)."""
    return default_tile()


_L2_A_BUDGET = 256 * 1024
_HERE = Path(__file__)
_DEPS = hashlib.sha1(b"".join(p.read_bytes() for p in (
    _HERE, _HERE.with_name("simd.py"), _HERE.with_name("simd_int8.py"), _HERE.with_name("gemm.py")))
).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------
# packing


@dataclass(frozen=True)
class PackedInt8:
    """A constant [K, N] 8-bit weight packed for `vpdpbusd`, with its scales and column sums."""

    data: np.ndarray  # int8 [n_panels * KP * NR], 64-byte aligned
    k: int
    kp: int
    n: int
    nr: int
    colsum: np.ndarray  # int32 [n_panels * NR]: sum_k w_s8[k, n] (0 in padding)
    zero: np.ndarray  # int32 [n_panels * NR]: shifted weight zero point zw[n]
    has_zero: bool
    scale: np.ndarray  # float32 [n_panels * NR]: weight scale per column (0 in padding)
    layout: str = "vnni"  # "amx": panels of 32 columns, K zero-padded to `kpad` (a multiple of 64)
    kpad: int = 0  # K extent of each packed panel (KP for "vnni")

    @property
    def n_panels(self) -> int:
        return -(-self.n // self.nr)

    def unpack(self) -> np.ndarray:
        """The signed [K, N] int32 matrix w_s8 - zw (for tests)."""
        kpad = self.kpad or self.kp
        d = self.data.reshape(self.n_panels, kpad // 4, self.nr, 4).transpose(1, 3, 0, 2)
        w = d.reshape(kpad, self.n_panels * self.nr)[: self.k, : self.n].astype(np.int32)
        return w - self.zero[: self.n]


def _per_column(value: np.ndarray | float | int, n: int, dtype: Any) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size not in (1, n):
        raise ValueError(f"expected a scalar or {n} per-column values, got {arr.size}")
    return np.broadcast_to(arr, (n,)).astype(dtype)


def pack_b_int8(w: np.ndarray, scale: np.ndarray | float, zero_point: np.ndarray | int | None = None,
                nr: int | None = None, layout: str | None = None) -> PackedInt8:
    """Pack an int8 or uint8 [K, N] weight with per-tensor or per-column scale and zero point.

    `layout`: "vnni" (panels of `nr` columns for the AVX-512 kernels), "amx" (panels of 32 columns,
    K padded to 64, for the AMX kernels of `gemm_amx`; `nr` is ignored) or None: "amx" where
    `simd_amx.amx_usable()`, else "vnni".
    """
    if w.ndim != 2 or w.dtype not in (np.int8, np.uint8):
        raise ValueError(f"pack_b_int8 expects a 2-D int8/uint8 weight, got {w.dtype} {w.shape}")
    if layout is None:
        layout = "amx" if amx_usable() else "vnni"
    if layout not in ("vnni", "amx"):
        raise ValueError(f"layout must be 'vnni' or 'amx', got {layout!r}")
    if layout == "amx":
        require_amx()
        nr = AMX_NR
    nr = default_tile_int8()[1] if nr is None else nr
    if nr % 16 or nr <= 0:
        raise ValueError(f"panel width must be a positive multiple of 16, got {nr}")
    k, n = (int(s) for s in w.shape)
    shift = 128 if w.dtype == np.uint8 else 0
    # uint8 - 128 as int8 is a flip of the top bit; temporaries stay at one weight's size (large models)
    w_s8 = (w ^ np.uint8(0x80)).view(np.int8) if shift else w
    zw = _per_column(0 if zero_point is None else zero_point, n, np.int64) - shift
    kp = 4 * max(1, -(-k // 4))
    kpad = 64 * -(-kp // 64) if layout == "amx" else kp
    n_pan = max(1, -(-n // nr))
    full = w_s8
    if (kpad, n_pan * nr) != (k, n):
        full = np.zeros((kpad, n_pan * nr), dtype=np.int8)
        full[:k, :n] = w_s8
    data = _aligned_empty((n_pan * kpad * nr,), np.int8)
    np.copyto(data.reshape(n_pan, kpad // 4, nr, 4), full.reshape(kpad // 4, 4, n_pan, nr).transpose(2, 0, 3, 1))
    colsum = np.zeros(n_pan * nr, dtype=np.int32)
    colsum[:n] = w_s8.sum(axis=0, dtype=np.int64)
    zero = np.zeros(n_pan * nr, dtype=np.int32)
    zero[:n] = zw
    sc = np.zeros(n_pan * nr, dtype=np.float32)
    sc[:n] = _per_column(scale, n, np.float32)
    return PackedInt8(data=data, k=k, kp=kp, n=n, nr=nr, colsum=colsum, zero=zero,
                      has_zero=bool(np.any(zw != 0)), scale=sc, layout=layout, kpad=kpad)


# ----------------------------------------------------------------------------------------------
# code generation


def _gen_source(k: int, n: int, mr: int, nr: int, act: str | None, out_q: bool, nt: bool = False,
                fake_quant: bool = False) -> str:
    """Source of a module with `qgemm_kernel` specialised for (K, N, MR, NR, act, output kind);
    `nt`: full float vectors are stored non-temporally (needs a 64-byte aligned `out` and N % 16 == 0);
    `fake_quant`: the float epilogue rounds to the grids of its `fq` argument (`tiles.row_epilogue`)."""
    nv = nr // 16
    kp = 4 * max(1, -(-k // 4))
    n_pan = max(1, -(-n // nr))
    last_w = n - (n_pan - 1) * nr
    L: list[str] = []
    emit = L.append
    emit(f"# Generated by sparsejit.kernels.gemm_int8: K={k} N={n} MR={mr} NR={nr} act={act} "
         f"out_q={out_q} nt={nt} fake_quant={fake_quant} deps={_DEPS}")
    emit("from numba import njit, prange")
    emit("from sparsejit.kernels.simd import (vadd, vbroadcast, vcvt_i2f, vdpbusd, vfma, vibroadcast, viload,"
         " vizero, vload, vload_mask, vmax, vmin, vmul, vprefetch, vsfence, vstore, vstore_mask, vstore_nt, viadd)")
    emit("from sparsejit.kernels.simd_int8 import (vload_bcast4, visub, vimul, vimax, vimin, vrint, vcvt_f2i,"
         " vstore_bytes_mask, vfake_quant)")
    if act is not None:
        emit(activation_import(act, fake_quant, _ACT_FN[act]))
    emit("")
    emit(f"K = {k}\nKP = {kp}\nN = {n}\nMR = {mr}\nNR = {nr}\nNPAN = {n_pan}\n")
    emit("@njit(cache=True, fastmath=True)")
    emit("def _tile(a, bp, out, comp, scale, bias, res, rowsum, zw, i0, nrows, p, M, has_res, has_zw,"
         " zy, qlo, qhi, fq):")
    emit("    cb = p * NR")
    if not out_q:  # the residual tile is read after the whole K loop: have it in L2 by then
        emit("    if has_res:")
        for r in range(mr):
            for v in range(nv):
                emit(f"        vprefetch(res, min(i0 + {r}, M - 1) * N + cb + {16 * v})")
    L.extend(group4_dot_tile(mr, nv, nr, "KP", "KP // 4", "vizero()", "vdpbusd"))
    L.extend(epilogue_setup(nv, out_q))

    deferred = act is not None and fake_quant and not out_q  # a long tail, once per tile (`tiles.deferred_tail`)

    def body(indent: str, width: int) -> None:
        for r in range(mr):
            ind = indent
            if r > 0:
                emit(f"{indent}if nrows > {r}:")
                ind = indent + "    "
            L.extend(row_epilogue(lambda v, r=r: f"c{r}_{v}", f"i0 + {r}", nv, width, ind, out_q, act, nt,
                                  fake_quant, tail=not deferred))
        if deferred:
            L.extend(deferred_tail(nv, width, indent, act, fake_quant))

    split_last_panel(body, emit, nr, last_w, n_pan)
    emit("")
    out_t = "uint8[::1]" if out_q else "float32[::1]"
    sig = (f"void(uint8[::1], int8[::1], {out_t}, int32[::1], float32[::1], float32[::1], float32[::1], "
           "int32[::1], int32[::1], int64, int64, boolean, boolean, int64, int64, int64, float32[::1])")
    L.extend(panel_driver(sig, "def qgemm_kernel(a, bp, out, comp, scale, bias, res, rowsum, zw, M, tpb, has_res,"
                               " has_zw, zy, qlo, qhi, fq):",
                          "_tile(a, bp, out, comp, scale, bias, res, rowsum, zw, i0, min(MR, M - i0), p, M, has_res,"
                          " has_zw, zy, qlo, qhi, fq)", after_task=("vsfence()",) if nt else ()))
    emit("")
    return "\n".join(L)


def _kernel(k: int, n: int, mr: int, nr: int, act: str | None, out_q: bool, nt: bool = False,
            fake_quant: bool = False) -> Any:
    kind = ("q" if out_q else "nt" if nt else "f") + ("_fq" if fake_quant else "")
    tag = f"qgemm_k{k}_n{n}_{mr}x{nr}_{act or 'id'}_{kind}"
    return load_generated_once(tag, lambda: _gen_source(k, n, mr, nr, act, out_q, nt, fake_quant)).qgemm_kernel


_EMPTY_F = np.zeros(16, dtype=np.float32)
_NO_ROWSUM = np.zeros(1, dtype=np.int32)
_NO_FAKE_QUANT = fake_quant_vector(None)


def qgemm(a_q: np.ndarray, packed: PackedInt8, out: np.ndarray, comp: np.ndarray, scale: np.ndarray,
          bias: np.ndarray | None = None, activation: str | None = None, residual: np.ndarray | None = None,
          rowsum: np.ndarray | None = None, out_zero: int = 0, mr: int | None = None,
          fake_quant: np.ndarray | None = None) -> None:
    """Run the int8 GEMM on the quantised activation scratch `a_q` (uint8 [M, KP]).

    `comp` (int32) and `scale` (float32) are per-column vectors of `n_panels * NR` entries (see the
    module docstring; `epilogue_vectors` builds them). `out` is float32 [..., N] (with `bias`,
    `activation`, `residual` fused) or uint8/int8 [..., N] (requantised with `out_zero`, saturating).
    `rowsum` (int32 [M]) is required when the weight has a non-zero zero point.
    """
    bind_qgemm(a_q, packed, out, bias, activation, residual, rowsum, out_zero, mr, fake_quant)(comp, scale)


def bind_qgemm(a_q: np.ndarray, packed: PackedInt8, out: np.ndarray, bias: np.ndarray | None = None,
               activation: str | None = None, residual: np.ndarray | None = None,
               rowsum: np.ndarray | None = None, out_zero: int = 0,
               mr: int | None = None, fake_quant: np.ndarray | None = None) -> Callable[[np.ndarray, np.ndarray], None]:
    """`qgemm` with its operands fixed: checks, views and kernel lookup done once, here. `fake_quant`
    (float32, 4 per point, see `simd_int8.fake_quant_params`): round the float output where a QDQ graph
    does, before the bias, after it, last, and inside a GELU (VNNI layout, float output only).

    Returns `run(comp, scale)`, which reads the current contents of `a_q`, `residual` and `rowsum`
    and writes `out` (a plan step's buffers stay put; only their data changes from call to call).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {activation!r}")
    m = a_q.shape[0]
    if a_q.shape[1] != packed.kp or a_q.dtype != np.uint8:
        raise ValueError(f"a_q must be uint8 [M, {packed.kp}], got {a_q.dtype} {a_q.shape}")
    if out.size != m * packed.n:
        raise ValueError(f"out has {out.size} elements, expected {m}x{packed.n}")
    if m == 0 or packed.n == 0:
        return lambda comp, scale: None
    out_q = out.dtype != np.float32
    if fake_quant is not None and (out_q or packed.layout != "vnni"):
        raise ValueError("fake_quant needs a float output and the VNNI layout")
    if packed.has_zero and rowsum is None:
        raise ValueError("this weight has a non-zero zero point: pass the activation row sums")
    pad = packed.n_panels * packed.nr
    bias_f = _EMPTY_F
    if not out_q:
        bias_f = bias.reshape(-1) if bias is not None else np.zeros(pad, np.float32)
        if bias_f.size != pad or bias_f.dtype != np.float32:
            bias_f = pad_columns(bias_f, packed)
    res_f = _EMPTY_F if residual is None else np.ascontiguousarray(residual, dtype=np.float32).reshape(-1)
    res_src = None
    if residual is not None and (np.may_share_memory(res_f, out) or not np.may_share_memory(res_f, residual)):
        res_src, res_f = residual, np.empty(res_f.size, np.float32)  # a copy taken at every call
    qlo, qhi = (-128, 127) if out.dtype == np.int8 else (0, 255)
    out_f = out.reshape(-1).view(np.uint8) if out_q else out.reshape(-1)
    if not np.may_share_memory(out_f, out):
        raise ValueError("out must be C-contiguous")
    act, nt = activation if not out_q else None, streams_output(out, packed.n)
    rs = rowsum if rowsum is not None else _NO_ROWSUM
    a_f = a_q.reshape(-1)
    has_res, zero_y = residual is not None, int(out_zero)
    if packed.layout == "amx":
        amx = amx_kernel(packed.k, packed.kp, packed.n, act, out_q, nt)
        # row blocks per task as for the VNNI tiles, without an L2 budget: all of M unless the panels
        # alone leave too few tasks for the threads
        cfg, blocks = amx_tile_configs(m), tiles_per_block(m, packed.kp, AMX_MR, packed.n_panels, budget=1 << 62)

        def run_amx(comp: np.ndarray, scale: np.ndarray) -> None:
            if res_src is not None:
                res_f.reshape(res_src.shape)[...] = res_src
            run_dynamic_tasks(amx, a_f, packed.data, out_f, comp, scale, bias_f, res_f, rs, packed.zero, cfg, m,
                              blocks, has_res, packed.has_zero, zero_y, qlo, qhi)

        return run_amx
    mr = default_tile_int8()[0] if mr is None else mr
    if act is not None and fake_quant is not None:
        nt = False  # the rounded activation re-reads the tile's stored rows
    kernel = _kernel(packed.k, packed.n, mr, packed.nr, act, out_q, nt, fake_quant is not None)
    tpb = tiles_per_block(m, packed.kp, mr, packed.n_panels, _L2_A_BUDGET)
    fq = _NO_FAKE_QUANT if fake_quant is None else fake_quant_vector(fake_quant)

    def run(comp: np.ndarray, scale: np.ndarray) -> None:
        if res_src is not None:
            res_f.reshape(res_src.shape)[...] = res_src
        run_dynamic_tasks(kernel, a_f, packed.data, out_f, comp, scale, bias_f, res_f, rs, packed.zero, m, tpb,
                          has_res, packed.has_zero, zero_y, qlo, qhi, fq)

    return run


def pad_columns(v: np.ndarray, packed: PackedInt8) -> np.ndarray:
    """A per-column float32 vector (e.g. a bias) zero-padded to `n_panels * NR` entries."""
    out = np.zeros(packed.n_panels * packed.nr, np.float32)
    out[: packed.n] = np.asarray(v, dtype=np.float32).reshape(-1)
    return out


@njit(cache=True)
def _epilogue_into(colsum, zero, wscale, k, za, a_scale, comp, scale):  # pragma: no cover - compiled
    for i in range(colsum.size):
        comp[i] = za * np.int64(colsum[i]) - k * za * np.int64(zero[i])
        scale[i] = a_scale * wscale[i]


def bind_epilogue_vectors(packed: PackedInt8, comp: np.ndarray,
                          scale: np.ndarray) -> Callable[[int, float], None]:
    """`epilogue_vectors(packed, a_zero, a_scale)` written into preallocated `comp` / `scale` by one
    compiled call (what a dynamically quantised product does at every run): returns
    `fill(a_zero, a_scale)`."""
    colsum, zero, wscale, k = packed.colsum, packed.zero, packed.scale, np.int64(packed.k)

    def fill(a_zero: int, a_scale: float) -> None:
        _epilogue_into(colsum, zero, wscale, k, a_zero, np.float32(a_scale), comp, scale)  # float32 product

    return fill


def epilogue_vectors(packed: PackedInt8, a_zero: int, a_scale: float,
                     out_scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(comp, scale) for activation zero point `a_zero` (uint8 domain) and scale `a_scale`."""
    za = np.int64(a_zero)
    comp = (za * packed.colsum.astype(np.int64) - packed.k * za * packed.zero.astype(np.int64)).astype(np.int32)
    scale = (np.float32(a_scale) * packed.scale).astype(np.float32)
    if out_scale is not None:
        scale = (scale / np.float32(out_scale)).astype(np.float32)
    return comp, scale
