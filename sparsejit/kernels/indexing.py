"""Gathers and scans: embedding lookups, Gather along an axis, GatherElements, cumulative sums."""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, nogil=True)
def gather_middle(data, idx, out):  # pragma: no cover - compiled
    """out[o, j, i] = data[o, idx[j], i] with negative indices wrapped; raises on out-of-range."""
    outer, n, inner = data.shape
    m = idx.shape[0]
    for j in range(m):
        v = idx[j]
        if v < -n or v >= n:
            raise IndexError("Gather index out of range")
    for t in prange(outer * m):
        o = t // m
        j = t - o * m
        v = idx[j]
        if v < 0:
            v += n
        for i in range(inner):
            out[o, j, i] = data[o, v, i]


def gather(data: np.ndarray, indices: np.ndarray, axis: int, out: np.ndarray) -> None:
    """ONNX Gather: out = take(data, indices, axis)."""
    axis = axis % data.ndim
    outer = int(np.prod(data.shape[:axis]))
    inner = int(np.prod(data.shape[axis + 1:]))
    d3 = np.ascontiguousarray(data).reshape(outer, data.shape[axis], inner)
    flat = np.ascontiguousarray(indices).reshape(-1).astype(np.int64, copy=False)
    gather_middle(d3, flat, out.reshape(outer, flat.shape[0], inner))


@njit(parallel=True, cache=True, nogil=True)
def cumsum_middle(x, exclusive, reverse, out):  # pragma: no cover - compiled
    outer, n, inner = x.shape
    for t in prange(outer * inner):
        o = t // inner
        i = t - o * inner
        acc = x[o, 0, i] * 0
        for step in range(n):
            j = n - 1 - step if reverse else step
            if exclusive:
                out[o, j, i] = acc
                acc += x[o, j, i]
            else:
                acc += x[o, j, i]
                out[o, j, i] = acc


def cumsum(x: np.ndarray, axis: int, exclusive: bool, reverse: bool, out: np.ndarray) -> None:
    """ONNX CumSum along `axis`."""
    axis = axis % x.ndim
    outer = int(np.prod(x.shape[:axis]))
    inner = int(np.prod(x.shape[axis + 1:]))
    shape3 = (outer, x.shape[axis], inner)
    cumsum_middle(np.ascontiguousarray(x).reshape(shape3), exclusive, reverse, out.reshape(shape3))
