"""Row-wise normalisations: softmax and layer normalisation over the last axis."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from sparsejit.kernels.simd import (
    vadd,
    vbroadcast,
    vexp,
    vextract,
    vfma,
    vhsum,
    vload,
    vmax,
    vmul,
    vstore,
    vsub,
    vzero,
)


@njit(parallel=True, cache=True, nogil=True)
def softmax_rows_f32(x, out):  # pragma: no cover - compiled
    """Vectorised softmax of each row of C-contiguous float32 2-D arrays (tails done in scalar). A row
    holding a NaN, or whose maximum is infinite (e.g. masked everywhere with -inf), comes out NaN, as
    the ONNX definition exp(x - max) / sum gives it (onnxruntime, PyTorch do the same)."""
    rows, n = x.shape
    xf = x.reshape(-1)
    of = out.reshape(-1)
    body = n - n % 16
    for r in prange(rows):
        base = r * n
        vm = vbroadcast(-np.inf)
        vt = vzero()
        for j in range(0, body, 16):
            v = vload(xf, base + j)
            vm = vmax(vm, v)
            vt = vadd(vt, v)
        m = _hmax(vm, body > 0)
        total = vhsum(vt)
        for j in range(body, n):
            total += xf[base + j]
            if xf[base + j] > m:
                m = xf[base + j]
        if total != total or math.isinf(m):  # NaN in the row (a sum of x is NaN then), or max is +-inf
            for j in range(n):
                of[base + j] = np.float32(np.nan)
            continue
        vmb = vbroadcast(m)
        vs = vzero()
        for j in range(0, body, 16):
            e = vexp(vsub(vload(xf, base + j), vmb))
            vstore(of, base + j, e)
            vs = vadd(vs, e)
        s = vhsum(vs)
        for j in range(body, n):
            e = np.float32(math.exp(xf[base + j] - m))
            of[base + j] = e
            s += e
        inv = np.float32(1.0) / s
        vinv = vbroadcast(inv)
        for j in range(0, body, 16):
            vstore(of, base + j, vmul(vload(of, base + j), vinv))
        for j in range(body, n):
            of[base + j] *= inv


@njit(inline="always", cache=True)
def _hmax(v, valid):  # pragma: no cover - compiled
    if not valid:
        return np.float32(-np.inf)
    m = vextract(v, 0)
    for lane in range(1, 16):
        e = vextract(v, lane)
        if e > m:
            m = e
    return m


@njit(inline="always", cache=True)
def _accumulate(v, d, squared):  # pragma: no cover - compiled
    return vfma(d, d, v) if squared else vadd(v, d)


@njit(inline="always", cache=True)
def _row_moment(xf, base, body, vmean, squared):  # pragma: no cover - compiled
    """Vector sum of (x - mean), or of its square, over the row's first `body` elements. Four
    accumulators: one chain of dependent adds would wait on the add latency at every vector."""
    v0 = vzero()
    v1 = vzero()
    v2 = vzero()
    v3 = vzero()
    j = 0
    while j + 64 <= body:
        v0 = _accumulate(v0, vsub(vload(xf, base + j), vmean), squared)
        v1 = _accumulate(v1, vsub(vload(xf, base + j + 16), vmean), squared)
        v2 = _accumulate(v2, vsub(vload(xf, base + j + 32), vmean), squared)
        v3 = _accumulate(v3, vsub(vload(xf, base + j + 48), vmean), squared)
        j += 64
    while j < body:
        v0 = _accumulate(v0, vsub(vload(xf, base + j), vmean), squared)
        j += 16
    return vadd(vadd(v0, v1), vadd(v2, v3))


@njit(inline="always", cache=True)
def _layer_norm_row(xf, of, r, n, body, scale, bias, eps):  # pragma: no cover - compiled
    base = r * n
    s = np.float64(vhsum(_row_moment(xf, base, body, vzero(), False)))
    for j in range(body, n):
        s += xf[base + j]
    mean = np.float32(s / n)
    vmean = vbroadcast(mean)
    q = np.float64(vhsum(_row_moment(xf, base, body, vmean, True)))
    for j in range(body, n):
        d = xf[base + j] - mean
        q += d * d
    inv = np.float32(1.0 / math.sqrt(q / n + eps))
    vinv = vbroadcast(inv)
    for j in range(0, body, 16):
        y = vmul(vsub(vload(xf, base + j), vmean), vinv)
        vstore(of, base + j, vfma(y, vload(scale, j), vload(bias, j)))
    for j in range(body, n):
        of[base + j] = (xf[base + j] - mean) * inv * scale[j] + bias[j]


@njit(parallel=True, cache=True, nogil=True)
def layer_norm_rows_f32(x, scale, bias, eps, out):  # pragma: no cover - compiled
    """Vectorised LayerNorm of each row (float32 data, float32 vector sums, two passes)."""
    rows, n = x.shape
    xf = x.reshape(-1)
    of = out.reshape(-1)
    body = n - n % 16
    for r in prange(rows):
        _layer_norm_row(xf, of, r, n, body, scale, bias, eps)


@njit(inline="always", cache=True)
def _row_max(x, r):  # pragma: no cover - compiled
    m = x[r, 0]
    for j in range(1, x.shape[1]):
        if x[r, j] > m:
            m = x[r, j]
    return m


@njit(parallel=True, cache=True, nogil=True)
def softmax_rows(x, out):  # pragma: no cover - compiled
    """out[r, :] = softmax(x[r, :]) for a 2-D view."""
    rows, n = x.shape
    for r in prange(rows):
        m = _row_max(x, r)
        if math.isinf(m):  # exp(x - max) is NaN at the max: the whole row is NaN, as defined
            m = np.nan
        s = 0.0
        for j in range(n):
            e = math.exp(x[r, j] - m)
            out[r, j] = e
            s += e
        inv = 1.0 / s
        for j in range(n):
            out[r, j] *= inv


@njit(parallel=True, cache=True, nogil=True)
def log_softmax_rows(x, out):  # pragma: no cover - compiled
    rows, n = x.shape
    for r in prange(rows):
        m = _row_max(x, r)
        s = 0.0
        for j in range(n):
            s += math.exp(x[r, j] - m)
        lse = m + math.log(s)
        for j in range(n):
            out[r, j] = x[r, j] - lse


@njit(parallel=True, cache=True, nogil=True)
def layer_norm_rows(x, scale, bias, eps, out):  # pragma: no cover - compiled
    """out[r, :] = (x[r, :] - mean) / sqrt(var + eps) * scale + bias, statistics in float64."""
    rows, n = x.shape
    for r in prange(rows):
        s = 0.0
        for j in range(n):
            s += x[r, j]
        mean = s / n
        v = 0.0
        for j in range(n):
            d = x[r, j] - mean
            v += d * d
        inv = 1.0 / math.sqrt(v / n + eps)
        for j in range(n):
            out[r, j] = (x[r, j] - mean) * inv * scale[j] + bias[j]


def softmax(x: np.ndarray, out: np.ndarray, axis: int, log: bool = False) -> None:
    """Softmax along `axis` (moved to the last position through a strided view if needed)."""
    axis = axis % x.ndim
    xv, ov = np.moveaxis(x, axis, -1), np.moveaxis(out, axis, -1)
    n = x.shape[axis]
    kernel = log_softmax_rows if log else softmax_rows
    if not log and x.dtype == np.float32 and out.dtype == np.float32:
        kernel = softmax_rows_f32
    if ov.flags.c_contiguous and xv.flags.c_contiguous:
        kernel(xv.reshape(-1, n), ov.reshape(-1, n))
        return
    tmp = np.empty(ov.shape, dtype=out.dtype)
    kernel(np.ascontiguousarray(xv).reshape(-1, n), tmp.reshape(-1, n))
    ov[...] = tmp
