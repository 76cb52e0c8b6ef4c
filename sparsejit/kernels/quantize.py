"""Vectorised activation quantisers feeding the int8 GEMMs: float32 / 8-bit rows -> uint8 [M, KP].

- `quantize_rows`: static scale and zero point, `x / scale` rounded half to even and saturated, like
  onnxruntime's MlasQuantizeLinear.
- `dynamic_quantize_rows`: ONNX DynamicQuantizeLinear (uint8, per tensor): min/max of the whole
  tensor, its (scale, zero point) in float32, then the quantiser — in one compiled call.
- `convert_rows`: already-quantised 8-bit rows copied in (int8 shifted by +128 to uint8).

Each optionally writes the row sums of the quantised values (the GEMM epilogue needs them when the
weight has a zero point). Rows are padded with zeros from K to KP. Tensors below `_PARALLEL_MIN`
elements run on the calling thread: waking the worker threads costs more than the work (a
128 x 768 activation quantises in ~10 us on one core).
"""

from __future__ import annotations

import numpy as np
from numba import get_num_threads, njit, prange

from sparsejit.kernels.simd import (
    vbroadcast,
    vdiv,
    viadd,
    vibroadcast,
    vistore,
    vizero,
    vload,
    vload_mask,
    vmax,
    vmin,
    vmul,
    vzero,
)
from sparsejit.kernels.simd_int8 import (
    vcvt_rint,
    vhmax,
    vhmin,
    vihsum,
    vimax,
    vimin,
    vload_bytes_i,
    vpack_u8x4,
    vstore_bytes_mask,
    vsum_bytes,
    vsum_bytes_total,
)
from sparsejit.kernels.threading import configure_threading

__all__ = ["quantize_rows", "dynamic_quantize_rows", "convert_rows"]

configure_threading()

_PARALLEL_MIN = 1 << 18
_NO_ROWSUM = np.zeros(1, dtype=np.int32)
_NO_MULTIPLIER = np.zeros(16, dtype=np.float32)


@njit(inline="always", cache=True)
def _minmax(x, lo, hi):  # type: ignore[no-untyped-def]
    mn = vzero()  # zero padding of masked loads is harmless: the range always includes 0
    mx = vzero()
    mn2 = vzero()  # two chains each: one would wait on the min/max latency at every vector
    mx2 = vzero()
    i = lo
    while i + 32 <= hi:
        v = vload(x, i)
        w = vload(x, i + 16)
        mn = vmin(mn, v)
        mx = vmax(mx, v)
        mn2 = vmin(mn2, w)
        mx2 = vmax(mx2, w)
        i += 32
    while i < hi:
        v = vload_mask(x, i, min(16, hi - i))
        mn = vmin(mn, v)
        mx = vmax(mx, v)
        i += 16
    return vhmin(vmin(mn, mn2)), vhmax(vmax(mx, mx2))


@njit(inline="always", cache=True)
def _range_params(lo, hi):  # type: ignore[no-untyped-def]
    # float32 throughout, as DynamicQuantizeLinear specifies (a float32 division computed in float64 and
    # rounded once to float32 is the correctly rounded float32 quotient, so promotion would not matter)
    lo = min(np.float32(0.0), lo)
    hi = max(np.float32(0.0), hi)
    scale = np.float32((hi - lo) / np.float32(255.0))
    if scale == 0 or not np.isfinite(scale):
        scale = np.float32(1.0)
    zp = np.float32(np.float32(0.0) - np.float32(lo / scale))
    zp = min(max(zp, np.float32(0.0)), np.float32(255.0))
    return scale, int(np.rint(zp))


@njit(inline="always", cache=True)
def _quantized_lanes(v, s, z, flo, fhi):  # type: ignore[no-untyped-def]
    """rint(v / s) + zp as int32 lanes, the quotient clamped to +-512 first (NaN -> -512); not yet
    clamped to [0, 255]. (Clamping before rounding is the same as after: the bounds are integers.)"""
    return viadd(vcvt_rint(vmin(vmax(vdiv(v, s), flo), fhi)), z)


@njit(inline="always", cache=True)
def _row_values(x, xo, j, cm, use_cm):  # type: ignore[no-untyped-def]
    """x[xo+j : xo+j+16], times cm[j : j+16] when `use_cm` (float32 products, as a graph's Mul makes them)."""
    v = vload(x, xo + j)
    if use_cm:
        v = vmul(v, vload(cm, j))
    return v


@njit(inline="always", cache=True)
def _quantize_row(x, xo, out, oo, K, KP, scale, zp, cm, use_cm):  # type: ignore[no-untyped-def]
    """Quantise x[xo:xo+K] (times cm[:K] first when `use_cm`) into out[oo:oo+KP] (zeros past K); returns the
    sum of the K values."""
    s = vbroadcast(scale)
    z = vibroadcast(zp)
    lo = vizero()
    hi = vibroadcast(255)
    flo = vbroadcast(-512.0)
    fhi = vbroadcast(512.0)
    sums = vizero()
    j = 0
    while j + 64 <= K:  # 64 at a time: saturated and packed in registers, one 64-byte store
        packed = vpack_u8x4(_quantized_lanes(_row_values(x, xo, j, cm, use_cm), s, z, flo, fhi),
                            _quantized_lanes(_row_values(x, xo, j + 16, cm, use_cm), s, z, flo, fhi),
                            _quantized_lanes(_row_values(x, xo, j + 32, cm, use_cm), s, z, flo, fhi),
                            _quantized_lanes(_row_values(x, xo, j + 48, cm, use_cm), s, z, flo, fhi))
        vistore(out, oo + j, packed)
        sums = vsum_bytes(sums, packed)
        j += 64
    acc = vizero()
    while j < K:
        n = min(16, K - j)
        v = vload_mask(x, xo + j, n)
        if use_cm:
            v = vmul(v, vload_mask(cm, j, n))
        q = vimin(vimax(_quantized_lanes(v, s, z, flo, fhi), lo), hi)
        vstore_bytes_mask(out, oo + j, q, n)
        acc = viadd(acc, q)
        j += 16
    for j in range(K, KP):
        out[oo + j] = 0
    tail = (16 - (K % 64) % 16) % 16  # masked-off lanes of the last vector held zp
    return vsum_bytes_total(sums) + vihsum(acc) - tail * min(max(zp, 0), 255)


@njit(cache=True)
def _quantize_serial(x, out, rowsum, M, K, KP, scale, zp, want_rowsum, cm, use_cm):  # type: ignore[no-untyped-def]
    for r in range(M):
        t = _quantize_row(x, r * K, out, r * KP, K, KP, scale, zp, cm, use_cm)
        if want_rowsum:
            rowsum[r] = t


@njit(parallel=True, cache=True)
def _quantize_parallel(x, out, rowsum, M, K, KP, scale, zp, want_rowsum, cm, use_cm):  # type: ignore[no-untyped-def]
    for r in prange(M):
        t = _quantize_row(x, r * K, out, r * KP, K, KP, scale, zp, cm, use_cm)
        if want_rowsum:
            rowsum[r] = t


@njit(cache=True)
def _dynamic_serial(x, out, rowsum, M, K, KP, want_rowsum):  # type: ignore[no-untyped-def]
    mn, mx = _minmax(x, 0, M * K)
    scale, zp = _range_params(mn, mx)
    _quantize_serial(x, out, rowsum, M, K, KP, scale, zp, want_rowsum, _NO_MULTIPLIER, False)
    return scale, zp


@njit(parallel=True, cache=True)
def _dynamic_parallel(x, out, rowsum, M, K, KP, n_chunks, want_rowsum):  # type: ignore[no-untyped-def]
    n = M * K
    chunk = ((n + n_chunks - 1) // n_chunks + 15) // 16 * 16
    part_min = np.empty(n_chunks, np.float32)
    part_max = np.empty(n_chunks, np.float32)
    for c in prange(n_chunks):
        part_min[c], part_max[c] = _minmax(x, min(n, c * chunk), min(n, c * chunk + chunk))
    scale, zp = _range_params(part_min.min(), part_max.max())
    _quantize_parallel(x, out, rowsum, M, K, KP, scale, zp, want_rowsum, _NO_MULTIPLIER, False)
    return scale, zp


def _rows(x: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, int, int, int]:
    k = x.shape[-1] if x.ndim else 1
    m, kp = out.shape
    if x.size != m * k or kp < k or out.dtype != np.uint8:
        raise ValueError(f"cannot quantise {x.shape} rows into a uint8 {out.shape} scratch")
    return np.ascontiguousarray(x, dtype=np.float32).reshape(-1), m, k, kp


def quantize_rows(x: np.ndarray, out: np.ndarray, scale: float, zero_point: int,
                  rowsum: np.ndarray | None = None, multiplier: np.ndarray | None = None) -> None:
    """out[m, :K] = clamp(rint(x[m] / scale) + zero_point, 0, 255) as uint8; out[m, K:KP] = 0.

    `x` is float32 [..., K], `out` uint8 [M, KP]; `rowsum[m]` (int32) gets the sum of row m's
    quantised values when given. `multiplier` (float32 [K]): quantise x[m] * multiplier instead, each
    product rounded to float32 first, as a `Mul` node before the `QuantizeLinear` computes it.
    """
    flat, m, k, kp = _rows(x, out)
    if multiplier is not None and (multiplier.dtype != np.float32 or multiplier.shape != (k,)):
        raise ValueError(f"multiplier must be float32 [{k}], got {multiplier.dtype} {multiplier.shape}")
    kernel = _quantize_parallel if flat.size >= _PARALLEL_MIN else _quantize_serial
    kernel(flat, out.reshape(-1), _NO_ROWSUM if rowsum is None else rowsum, m, k, kp, np.float32(scale),
           int(zero_point), rowsum is not None, _NO_MULTIPLIER if multiplier is None else multiplier,
           multiplier is not None)


def dynamic_quantize_rows(x: np.ndarray, out: np.ndarray,
                          rowsum: np.ndarray | None = None) -> tuple[np.float32, int]:
    """DynamicQuantizeLinear of float32 `x` [..., K] into `out` (uint8 [M, KP], as `quantize_rows`).

    Returns (scale, zero_point), computed in float32 as the ONNX operator specifies.
    """
    flat, m, k, kp = _rows(x, out)
    rs = _NO_ROWSUM if rowsum is None else rowsum
    if flat.size < _PARALLEL_MIN:
        scale, zp = _dynamic_serial(flat, out.reshape(-1), rs, m, k, kp, rowsum is not None)
    else:
        n_chunks = max(1, min(4 * get_num_threads(), flat.size // 4096))
        scale, zp = _dynamic_parallel(flat, out.reshape(-1), rs, m, k, kp, n_chunks, rowsum is not None)
    return np.float32(scale), int(zp)


@njit(parallel=True, cache=True)
def _convert_rows_kernel(x, out, rowsum, M, K, KP, shift, want_rowsum):  # type: ignore[no-untyped-def]
    for r in prange(M):
        xo = r * K
        oo = r * KP
        sh = vibroadcast(shift)
        acc = vizero()
        for j in range(0, K, 16):
            m = min(16, K - j)
            q = viadd(vload_bytes_i(x, xo + j, m), sh)
            vstore_bytes_mask(out, oo + j, q, m)
            if want_rowsum:
                acc = viadd(acc, q)
        for j in range(K, KP):
            out[oo + j] = 0
        if want_rowsum:
            rowsum[r] = vihsum(acc) - ((16 - K % 16) % 16) * shift


def convert_rows(x: np.ndarray, out: np.ndarray, rowsum: np.ndarray | None = None) -> None:
    """Copy 8-bit rows [..., K] into the uint8 [M, KP] scratch (int8 shifted by +128), padding zeros."""
    k = x.shape[-1]
    m, kp = out.shape
    want = rowsum is not None
    rs = rowsum if rowsum is not None else _NO_ROWSUM
    shift = 128 if x.dtype == np.int8 else 0
    _convert_rows_kernel(x.reshape(-1), out.reshape(-1), rs, m, k, kp, shift, want)


@njit(parallel=True, cache=True)
def _requantize_kernel(acc, mult, zy, lo, hi, out):  # type: ignore[no-untyped-def]
    for i in prange(acc.size):
        y = np.rint(np.float32(np.float64(acc[i]) * mult)) + np.float32(zy)
        out[i] = min(max(y, np.float32(lo)), np.float32(hi))


@njit(parallel=True, cache=True)
def _add_into(acc, part):  # type: ignore[no-untyped-def]
    for i in prange(acc.size):
        acc[i] += part[i]


def requantize(acc: np.ndarray, multiplier: float, zero_point: int, out: np.ndarray) -> None:
    """out = saturate(rint(float32(acc * multiplier)) + zero_point) for an exact integer accumulator
    (float32 or float64 holding integers) into a C-contiguous 8-bit `out`, as onnxruntime requantises
    QLinearMatMul (the product of two scales over the output scale taken in float64)."""
    lo, hi = (0, 255) if out.dtype == np.uint8 else (-128, 127)
    mult = np.float64(np.asarray(multiplier, dtype=np.float64).reshape(()))  # a 1-element array as well
    _requantize_kernel(acc.reshape(-1), mult, int(zero_point), lo, hi, out.reshape(-1))


@njit(parallel=True, cache=True)
def _centre_kernel(x, zero, out):  # type: ignore[no-untyped-def]
    for i in prange(x.size):
        out[i] = np.float32(x[i]) - zero


def centre(x: np.ndarray, zero_point: float, out: np.ndarray) -> None:
    """out = float32(x) - zero_point for C-contiguous 8-bit `x` into float32 `out` (exact: |value| <= 255)."""
    _centre_kernel(x.reshape(-1), np.float32(zero_point), out.reshape(-1))


def accumulate(acc: np.ndarray, part: np.ndarray) -> None:
    """acc += part, elementwise, in parallel (float64 `acc`, float32 `part`, same size, C-contiguous)."""
    _add_into(acc.reshape(-1), part.reshape(-1))
