"""Correctness of sparsejit.kernels.gemm against a float64 numpy reference of the same formula.

Tolerance, per element: |out - ref| <= 1e-4 * |ref| + 1e-5 * (|a| @ |B| + |bias|) + 1e-6, i.e. 1e-4
relative, plus float32 accumulation error relative to the magnitude of the summed terms (matters only
where the sum cancels), plus the erf/tanh approximation error (~3e-7).

Compile budget: every distinct (K, N, activation) is one generated kernel (~1.5-3 s cold, ~0.1 s from
Numba's cache), so the shapes below use 14 of them plus the matmul kernel: about 35-45 s on a cold cache,
under 15 s warm. M is a runtime value and is swept freely.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparsejit.kernels import gemm as G

MS = (1, 3, 17, 128, 384)
# (K, N) pairs covering K in {1, 5, 64, 768, 3072} and N in {1, 7, 16, 33, 768, 3072}
KN_PLAIN = [(1, 7), (5, 33), (64, 1), (64, 16), (5, 3072), (768, 768), (3072, 768), (768, 3072), (1, 1),
            (3072, 7)]
ACT_CASES = [(64, 33, "relu"), (64, 33, "gelu_erf"), (64, 33, "gelu_tanh"), (768, 3072, "gelu_erf")]

try:
    from scipy.special import erf as _erf
except ImportError:  # scipy is optional: slower exact fallback
    _erf = np.vectorize(math.erf, otypes=[np.float64])


def _products(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a @ b, |a| @ |b|) in float64."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return a64 @ b64, np.abs(a64) @ np.abs(b64)


def _reference(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None, act: str | None,
               res: np.ndarray | None,
               products: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    y, scale = products if products is not None else _products(a, b)
    if bias is not None:
        y = y + bias
        scale = scale + np.abs(bias)
    if act == "relu":
        y = np.maximum(y, 0.0)
    elif act == "gelu_erf":
        y = 0.5 * y * (1.0 + _erf(y / math.sqrt(2.0)))
    elif act == "gelu_tanh":
        y = 0.5 * y * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (y + 0.044715 * y**3)))
    if res is not None:
        y = y + res
    return y, scale


def _check(out: np.ndarray, ref: np.ndarray, scale: np.ndarray) -> None:
    tol = 1e-4 * np.abs(ref) + 1e-5 * scale + 1e-6
    err = np.abs(out.astype(np.float64) - ref)
    bad = err > tol
    worst = int(err.argmax())
    assert not bad.any(), f"{bad.sum()} off; worst err {err.flat[worst]:.3g} (tol {tol.flat[worst]:.3g})"


def _data(m: int, k: int, n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """BERT-like magnitudes: unit activations, weights ~ N(0, 0.05), biases ~ N(0, 0.1)."""
    rng = np.random.default_rng(seed + 7919 * m + 31 * k + n)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    bias = (rng.standard_normal(n) * 0.1).astype(np.float32)
    res = rng.standard_normal((m, n), dtype=np.float32)
    return a, b, bias, res


@pytest.mark.parametrize("k,n", KN_PLAIN)
def test_gemm_plain_shapes(k: int, n: int) -> None:
    for m in MS:
        a, b, bias, res = _data(m, k, n)
        packed = G.pack_b(b)
        out = np.full((m, n), np.nan, np.float32)
        prods = _products(a, b)
        G.gemm(a, packed, out)
        _check(out, *_reference(a, b, None, None, None, prods))
        # bias and residual are runtime flags of the same kernel
        G.gemm(a, packed, out, bias=bias, residual=res)
        _check(out, *_reference(a, b, bias, None, res, prods))


@pytest.mark.parametrize("k,n,act", ACT_CASES)
def test_gemm_activations(k: int, n: int, act: str) -> None:
    for m in MS:
        a, b, bias, res = _data(m, k, n, seed=1)
        if k <= 64:
            a *= 3.0  # push pre-activations into the tails of erf / tanh
        packed = G.pack_b(b)
        out = np.full((m, n), np.nan, np.float32)
        prods = _products(a, b)
        for use_bias in (False, True):
            for use_res in (False, True):
                bb = bias if use_bias else None
                rr = res if use_res else None
                G.gemm(a, packed, out, bias=bb, activation=act, residual=rr)
                _check(out, *_reference(a, b, bb, act, rr, prods))


def test_pack_b_layout_and_no_copy() -> None:
    _, b, _, _ = _data(1, 70, 100)
    packed = G.pack_b(b, nr=64)
    assert packed.k == 70 and packed.n == 100 and packed.dtype == np.float32
    assert packed.data.shape == (2, 70, 64) and packed.data.ctypes.data % 64 == 0
    assert not np.shares_memory(packed.data, b)
    np.testing.assert_array_equal(packed.unpack(), b)
    assert np.all(packed.data[1, :, 100 - 64 :] == 0.0)
    assert [v for v in vars(packed).values() if isinstance(v, np.ndarray)] == [packed.data]


def test_leading_dims_residual_alias_and_noncontiguous() -> None:
    a, b, bias, _ = _data(24, 64, 16)
    packed = G.pack_b(b)
    a3 = a.reshape(2, 12, 64)
    out = np.empty((2, 12, 16), np.float32)
    G.gemm(a3, packed, out, bias=bias)
    ref, scale = _reference(a, b, bias, None, None)
    _check(out.reshape(24, 16), ref, scale)
    # in-place residual: out = out_old + act(a @ B + bias)
    old = out.copy()
    G.gemm(a3, packed, out, bias=bias, activation="relu", residual=out)
    ref, scale = _reference(a, b, bias, "relu", old.reshape(24, 16))
    _check(out.reshape(24, 16), ref, scale)
    # non-contiguous `a` is copied
    big = np.asfortranarray(a)
    out2 = np.empty((24, 16), np.float32)
    G.gemm(big, packed, out2)
    _check(out2, *_reference(a, b, None, None, None))


def test_gemm_k0_and_errors() -> None:
    b = np.zeros((0, 7), np.float32)
    packed = G.pack_b(b)
    out = np.empty((3, 7), np.float32)
    bias = np.arange(7, dtype=np.float32) - 3
    G.gemm(np.zeros((3, 0), np.float32), packed, out, bias=bias, activation="relu")
    np.testing.assert_array_equal(out, np.broadcast_to(np.maximum(bias, 0), (3, 7)))
    a, b, _, _ = _data(4, 5, 33)
    packed = G.pack_b(b)
    with pytest.raises(ValueError):
        G.gemm(a, packed, np.empty((4, 33), np.float32), activation="swish")
    with pytest.raises(ValueError):
        G.gemm(a, packed, np.empty((4, 32), np.float32))
    with pytest.raises(ValueError):
        G.gemm(a[:, :4], packed, np.empty((4, 33), np.float32))
    with pytest.raises(ValueError):
        G.gemm(a, packed, np.empty((4, 33), np.float64))


@pytest.mark.parametrize("batch,m,k,n", [(12, 128, 64, 128), (12, 128, 128, 64), (1, 1, 1, 1), (3, 17, 5, 33),
                                         (2, 7, 300, 40)])
def test_matmul_batched(batch: int, m: int, k: int, n: int) -> None:
    rng = np.random.default_rng(batch * 1000 + m + k + n)
    a = rng.standard_normal((batch, m, k), dtype=np.float32)
    b = rng.standard_normal((batch, k, n), dtype=np.float32)
    out = np.full((batch, m, n), np.nan, np.float32)
    G.matmul(a, b, out)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    scale = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    _check(out, ref, scale)


def test_matmul_transposed_view_and_2d() -> None:
    rng = np.random.default_rng(3)
    q = rng.standard_normal((4, 9, 16), dtype=np.float32)
    kk = rng.standard_normal((4, 11, 16), dtype=np.float32)
    out = np.empty((4, 9, 11), np.float32)
    G.matmul(q, kk.transpose(0, 2, 1), out)  # attention scores: Q @ K^T (view is copied)
    ref = q.astype(np.float64) @ kk.astype(np.float64).transpose(0, 2, 1)
    _check(out, ref, np.abs(q.astype(np.float64)) @ np.abs(kk.astype(np.float64)).transpose(0, 2, 1))
    out2 = np.empty((9, 11), np.float32)
    G.matmul(q[0], kk[0].T, out2)
    _check(out2, ref[0], np.abs(q[0].astype(np.float64)) @ np.abs(kk[0].astype(np.float64)).T)


def test_bound_gemm_reads_current_data() -> None:
    """`bind_gemm` fixes the buffers once; each run sees their current contents, and operands that
    need a copy per call (non-contiguous, residual aliasing out) fall back to `gemm`."""
    rng = np.random.default_rng(5)
    m, k, n = 24, 40, 70
    b = rng.standard_normal((k, n)).astype(np.float32)
    packed = G.pack_b(b)
    a = np.empty((m, k), np.float32)
    wide = np.empty((m, 2 * k), np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    res = np.empty((m, n), np.float32)
    out, out_view, aliased = (np.empty((m, n), np.float32) for _ in range(3))
    run = G.bind_gemm(a, packed, out, bias, "gelu_erf", res)
    run_view = G.bind_gemm(wide[:, ::2], packed, out_view, bias)
    run_alias = G.bind_gemm(a, packed, aliased, None, None, aliased)
    for _ in range(2):
        a[...] = rng.standard_normal((m, k))
        wide[:, ::2] = a
        res[...] = rng.standard_normal((m, n))
        aliased[...] = res
        run(), run_view(), run_alias()
        ref = np.empty((m, n), np.float32)
        G.gemm(a, packed, ref, bias, "gelu_erf", res)
        np.testing.assert_array_equal(out, ref)
        G.gemm(a, packed, ref, bias)
        np.testing.assert_array_equal(out_view, ref)
        G.gemm(a, packed, ref, None, None, res)
        np.testing.assert_array_equal(aliased, ref)
