"""Reductions over a contiguous middle axis of a (outer, reduced, inner) view."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

SUM, MEAN, MAX, MIN, PROD, SUM_SQUARE, L2, L1, LOG_SUM_EXP = range(9)


@njit(parallel=True, cache=True, nogil=True)
def reduce_middle(x, kind, out):  # pragma: no cover - compiled
    """out[o, i] = reduce(x[o, :, i]) for kind in the module's constants."""
    outer, n, inner = x.shape
    for t in prange(outer * inner):
        o = t // inner
        i = t - o * inner
        if kind == MAX or kind == MIN:
            acc = x[o, 0, i] * 1.0
            for j in range(1, n):
                v = x[o, j, i]
                if (kind == MAX and v > acc) or (kind == MIN and v < acc) or v != v:
                    acc = v
            out[o, i] = acc
        elif kind == PROD:
            p = 1.0
            for j in range(n):
                p *= x[o, j, i]
            out[o, i] = p
        elif kind == LOG_SUM_EXP:
            m = x[o, 0, i] * 1.0
            for j in range(1, n):
                m = max(m, x[o, j, i])
            s = 0.0
            for j in range(n):
                s += math.exp(x[o, j, i] - m)
            out[o, i] = m + math.log(s)
        else:
            s = 0.0
            for j in range(n):
                v = x[o, j, i]
                if kind == SUM_SQUARE or kind == L2:
                    s += v * v
                elif kind == L1:
                    s += abs(v)
                else:
                    s += v
            if kind == MEAN:
                s = s / n
            elif kind == L2:
                s = math.sqrt(s)
            out[o, i] = s


_EMPTY_IDENTITY = {SUM: 0, MEAN: np.nan, MAX: -np.inf, MIN: np.inf, PROD: 1, SUM_SQUARE: 0, L2: 0, L1: 0,
                   LOG_SUM_EXP: -np.inf}


def reduce(x: np.ndarray, axes: tuple[int, ...], kind: int, out: np.ndarray) -> None:
    """Reduce `x` over `axes` into `out` (any keepdims form of the reduced shape)."""
    axes = tuple(sorted(a % x.ndim for a in axes)) if axes else tuple(range(x.ndim))
    if x.ndim == 0:
        out[...] = x
        return
    contiguous = axes == tuple(range(axes[0], axes[-1] + 1))
    if not contiguous:  # move reduced axes together (a strided copy) first
        keep = [d for d in range(x.ndim) if d not in axes]
        x = np.ascontiguousarray(x.transpose(keep + list(axes)))
        axes = tuple(range(len(keep), x.ndim))
    outer = int(np.prod(x.shape[: axes[0]]))
    n = int(np.prod([x.shape[a] for a in axes]))
    inner = int(np.prod(x.shape[axes[-1] + 1:]))
    x3 = np.ascontiguousarray(x).reshape(outer, n, inner)
    if n == 0:  # the reduction's identity: ONNX defines these for empty sets
        identity = _EMPTY_IDENTITY[kind]
        if out.dtype == np.bool_ and kind in (MAX, MIN):
            identity = kind == MIN
        out[...] = identity
        return
    res = out.reshape(outer, inner) if out.flags.c_contiguous else np.empty((outer, inner), out.dtype)
    reduce_middle(x3, kind, res)
    if not out.flags.c_contiguous:
        out[...] = res.reshape(out.shape)
