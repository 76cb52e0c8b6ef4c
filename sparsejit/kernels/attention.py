"""Fused multi-head attention over projections in their own [batch, seq, heads*head_size] layout.

One task per (batch, head): Kᵀ of the head is packed once, then each query row gets its scores,
additive terms (masks, position biases), softmax and weighted sum of V — scores exist one row at a
time, never as a [batch, heads, seq, seq] tensor.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from sparsejit.kernels.simd import vadd, vbroadcast, vexp, vhsum, vload, vstore, vsub, vzero


@njit(parallel=True, cache=True, nogil=True, fastmath=True)
def attention(q, k, v, t0, t1, n_terms, sign0, sign1, scale, nan_to_zero, heads, d, out):  # pragma: no cover
    """out[b, i, h*d:(h+1)*d] = softmax(scale * q_h k_hᵀ + Σ sign * term)[i] @ v_h."""
    batch, sq, _ = q.shape
    sk = k.shape[1]
    body = sk - sk % 16
    for task in prange(batch * heads):
        bi = task // heads
        hi = task - bi * heads
        off = hi * d
        kt = np.empty((d, sk), dtype=np.float32)
        for j in range(sk):
            for e in range(d):
                kt[e, j] = k[bi, j, off + e]
        scores = np.empty(sk, dtype=np.float32)
        acc = np.empty(d, dtype=np.float32)
        for i in range(sq):
            for j in range(sk):
                scores[j] = 0.0
            for e in range(d):
                qe = q[bi, i, off + e] * scale
                for j in range(sk):
                    scores[j] += qe * kt[e, j]
            if n_terms > 0:
                for j in range(sk):
                    scores[j] += sign0 * t0[bi, hi, i, j]
            if n_terms > 1:
                for j in range(sk):
                    scores[j] += sign1 * t1[bi, hi, i, j]
            m = scores[0]
            for j in range(1, sk):
                if scores[j] > m:
                    m = scores[j]
            if m == -np.inf or m != m:
                fill = 0.0 if nan_to_zero else np.nan
                for e in range(d):
                    out[bi, i, off + e] = fill
                continue
            vm = vbroadcast(m)
            vs = vzero()
            for j in range(0, body, 16):
                ev = vexp(vsub(vload(scores, j), vm))
                vstore(scores, j, ev)
                vs = vadd(vs, ev)
            total = vhsum(vs)
            for j in range(body, sk):
                ex = np.float32(math.exp(scores[j] - m))
                scores[j] = ex
                total += ex
            inv = np.float32(1.0) / total
            for e in range(d):
                acc[e] = 0.0
            for j in range(sk):
                pj = scores[j] * inv
                for e in range(d):
                    acc[e] += pj * v[bi, j, off + e]
            for e in range(d):
                out[bi, i, off + e] = acc[e]
