"""The fused attention kernel and the SIMD transpose it packs Kᵀ with, against float64 numpy."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from sparsejit.kernels.attention import attention_kernel, bias_strides, packed_qkv_operands, qkv_operands
from sparsejit.kernels.simd import vtranspose16

NO_FQ = np.zeros(16, np.float32)  # no fake-quantisation point


@njit(cache=True)
def _transpose(src, soff, sstride, nrows, dst, doff, dstride):  # type: ignore[no-untyped-def]
    vtranspose16(src, soff, sstride, nrows, dst, doff, dstride)


@pytest.mark.parametrize("nrows", [16, 7, 1, 0, -3])
def test_vtranspose16_block_and_missing_rows(nrows: int) -> None:
    rng = np.random.default_rng(nrows + 10)
    src = rng.standard_normal((20, 40)).astype(np.float32)
    dst = np.full((18, 30), 7.0, np.float32)
    _transpose(src.reshape(-1), 2 * 40 + 3, 40, nrows, dst.reshape(-1), 30 + 2, 30)
    block = src[2:18, 3:19].copy()
    block[max(nrows, 0):] = 0.0
    expected = np.full((18, 30), 7.0, np.float32)
    expected[1:17, 2:18] = block.T
    np.testing.assert_array_equal(dst, expected)


def _reference(q, k, v, bias, heads, scale, nan_to_zero):  # type: ignore[no-untyped-def]
    b, sq, width = q.shape
    d = width // heads
    qh = q.astype(np.float64).reshape(b, sq, heads, d).transpose(0, 2, 1, 3)
    kh = k.astype(np.float64).reshape(b, -1, heads, d).transpose(0, 2, 1, 3)
    vh = v.astype(np.float64).reshape(b, -1, heads, d).transpose(0, 2, 1, 3)
    s = qh @ kh.transpose(0, 1, 3, 2) * scale + bias
    m = s.max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        p = np.exp(s - m)
        p = p / p.sum(axis=-1, keepdims=True)
    dead = np.isneginf(m[..., 0])
    p[dead] = 0.0 if nan_to_zero else np.nan
    return (p @ vh).transpose(0, 2, 1, 3).reshape(b, sq, width)


@pytest.mark.parametrize("batch,sq,sk,heads,d,bias_shape", [
    (2, 128, 128, 4, 64, "b11k"),    # BERT-like padding mask
    (1, 13, 45, 3, 16, "bhqk"),      # odd lengths: key padding inside a 32-key block, a partial row block
    (3, 9, 16, 2, 16, "1hqk"),       # position-bias-like term broadcast over batch (one kernel per head size)
    (1, 40, 70, 2, 80, "b1qk"),      # head size 80 (5 vectors)
])
@pytest.mark.parametrize("nan_to_zero", [True, False])
def test_attention_matches_float64(batch: int, sq: int, sk: int, heads: int, d: int, bias_shape: str,
                                   nan_to_zero: bool) -> None:
    rng = np.random.default_rng(sq * sk + d)
    q = rng.standard_normal((batch, sq, heads * d)).astype(np.float32)
    k = rng.standard_normal((batch, sk, heads * d)).astype(np.float32)
    v = rng.standard_normal((batch, sk, heads * d)).astype(np.float32)
    dims = {"b": batch, "h": heads, "q": sq, "k": sk, "1": 1}
    bias = (rng.standard_normal([dims[c] for c in bias_shape]) * 2).astype(np.float32)
    bias[..., -(sk // 3):] = -np.inf  # masked keys
    if bias.shape[2] == sq:
        bias[..., 1, :] = -np.inf  # one query row sees no key at all
    out = np.full_like(q, 99.0)
    scale = np.float32(1.0 / np.sqrt(d))
    attention_kernel(d)(*qkv_operands(q, k, v), bias, *bias_strides(bias), scale, nan_to_zero, heads, out, NO_FQ,
                            np.float32(0.0 if nan_to_zero else np.nan))
    expected = _reference(q, k, v, bias, heads, float(scale), nan_to_zero)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=2e-5)
    if bias.shape[2] == sq:
        row = out[:, 1]
        assert (np.all(row == 0.0) if nan_to_zero else np.all(np.isnan(row)))


def test_attention_large_negative_scores_do_not_underflow() -> None:
    """Every real score far below zero: the row max (not the zero-padded keys) must shift the exp."""
    q = np.full((1, 4, 16), 10.0, np.float32)
    k = np.full((1, 5, 16), -10.0, np.float32)  # 5 keys: 27 padded lanes in the 32-key block
    v = np.arange(5 * 16, dtype=np.float32).reshape(1, 5, 16)
    bias = np.zeros((1, 1, 1, 5), np.float32)
    out = np.empty_like(q)
    attention_kernel(16)(*qkv_operands(q, k, v), bias, *bias_strides(bias), np.float32(1.0), True, 1, out,
                         NO_FQ, np.float32(0.0))
    np.testing.assert_allclose(out[0, 0], v[0].mean(axis=0), rtol=1e-6)


@pytest.mark.parametrize("batch,seq,heads,d", [(2, 37, 3, 32), (1, 128, 12, 64)])
def test_packed_qkv_reads_the_three_column_ranges(batch: int, seq: int, heads: int, d: int) -> None:
    """One [b, s, 3w] projection (a merged Q/K/V product) read in place: the same output as the three
    separate arrays, bit for bit, and the float64 reference; the rows' other columns are not read."""
    rng = np.random.default_rng(seq + d)
    w = heads * d
    qkv = rng.standard_normal((batch, seq, 3 * w)).astype(np.float32)
    q, k, v = (np.ascontiguousarray(qkv[..., i * w:(i + 1) * w]) for i in range(3))
    bias = np.zeros((batch, 1, 1, seq), np.float32)
    bias[0, ..., -3:] = -np.inf
    scale = np.float32(1.0 / np.sqrt(d))
    kernel = attention_kernel(d)
    separate, packed = np.empty_like(q), np.full_like(q, 99.0)
    kernel(*qkv_operands(q, k, v), bias, *bias_strides(bias), scale, True, heads, separate, NO_FQ, np.float32(0.0))
    kernel(*packed_qkv_operands(qkv), bias, *bias_strides(bias), scale, True, heads, packed, NO_FQ, np.float32(0.0))
    np.testing.assert_array_equal(packed, separate)
    np.testing.assert_allclose(packed, _reference(q, k, v, bias, heads, float(scale), True), rtol=1e-5, atol=2e-5)
    with pytest.raises(ValueError, match="3\\*width"):
        packed_qkv_operands(qkv[..., 1:])
