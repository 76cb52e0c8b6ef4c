"""Plain parallel matrix products (portable baseline; `gemm.py` holds the explicit-SIMD path)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_MB = 8
_NB = 128


@njit(parallel=True, cache=True, nogil=True, fastmath=True)
def matmul_2d(a, b, out):  # pragma: no cover - compiled
    """out[M, N] = a[M, K] @ b[K, N]; rows and columns tiled so a B panel is reused from cache."""
    m, k_dim = a.shape
    n = b.shape[1]
    n_mb = (m + _MB - 1) // _MB
    n_nb = (n + _NB - 1) // _NB
    for task in prange(n_mb * n_nb):
        nb = task // n_mb
        mb = task - nb * n_mb
        i0 = mb * _MB
        i1 = min(i0 + _MB, m)
        j0 = nb * _NB
        j1 = min(j0 + _NB, n)
        acc = np.zeros((_MB, _NB), dtype=out.dtype)
        for kk in range(k_dim):
            for i in range(i1 - i0):
                aik = a[i0 + i, kk]
                for j in range(j1 - j0):
                    acc[i, j] += aik * b[kk, j0 + j]
        for i in range(i1 - i0):
            for j in range(j1 - j0):
                out[i0 + i, j0 + j] = acc[i, j]


@njit(parallel=True, cache=True, nogil=True, fastmath=True)
def matmul_batched(a, b, out):  # pragma: no cover - compiled
    """out[B, M, N] = a[B, M, K] @ b[B, K, N] (inputs may be broadcast/strided views)."""
    batch, m, k_dim = a.shape
    n = b.shape[2]
    for task in prange(batch * m):
        bi = task // m
        i = task - bi * m
        acc = np.zeros(n, dtype=out.dtype)
        for kk in range(k_dim):
            aik = a[bi, i, kk]
            for j in range(n):
                acc[j] += aik * b[bi, kk, j]
        for j in range(n):
            out[bi, i, j] = acc[j]


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """ONNX MatMul semantics (numpy broadcasting of batch dims) into a preallocated `out`."""
    if a.ndim == 1 or b.ndim == 1:
        res = np.matmul(a, b)  # vector products are rare and tiny in encoders
        out[...] = res
        return
    if b.ndim == 2 and a.flags.c_contiguous and out.flags.c_contiguous:
        matmul_2d(a.reshape(-1, a.shape[-1]), b, out.reshape(-1, out.shape[-1]))
        return
    batch_shape = out.shape[:-2]
    a3 = np.broadcast_to(a, batch_shape + a.shape[-2:]).reshape((-1,) + a.shape[-2:])
    b3 = np.broadcast_to(b, batch_shape + b.shape[-2:]).reshape((-1,) + b.shape[-2:])
    matmul_batched(a3, b3, out.reshape((-1,) + out.shape[-2:]))
