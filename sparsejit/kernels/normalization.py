"""Row-wise normalisations: softmax and layer normalisation over the last axis."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, nogil=True)
def softmax_rows(x, out):  # pragma: no cover - compiled
    """out[r, :] = softmax(x[r, :]) for a 2-D view."""
    rows, n = x.shape
    for r in prange(rows):
        m = x[r, 0]
        for j in range(1, n):
            if x[r, j] > m:
                m = x[r, j]
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
        m = x[r, 0]
        for j in range(1, n):
            if x[r, j] > m:
                m = x[r, j]
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
    if ov.flags.c_contiguous and xv.flags.c_contiguous:
        kernel(xv.reshape(-1, n), ov.reshape(-1, n))
        return
    tmp = np.empty(ov.shape, dtype=out.dtype)
    kernel(np.ascontiguousarray(xv).reshape(-1, n), tmp.reshape(-1, n))
    ov[...] = tmp
