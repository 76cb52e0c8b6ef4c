"""The vectorised LayerNorm row kernel against float64 numpy, over every path of its row loop."""

from __future__ import annotations

import numpy as np
import pytest

from sparsejit.kernels.normalization import layer_norm_rows_f32, softmax


@pytest.mark.parametrize("n", [7, 16, 80, 100, 768])  # scalar tail only; one vector; 4-wide + 1; + tail; 12 x 4-wide
def test_layer_norm_rows_matches_float64(n: int) -> None:
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((37, n)) * 3 + 5).astype(np.float32)  # a large mean: cancellation shows
    scale = rng.standard_normal(n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    out = np.empty_like(x)
    layer_norm_rows_f32(x, scale, bias, np.float32(1e-5), out)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=1, keepdims=True)
    ref = (x64 - mean) / np.sqrt(((x64 - mean) ** 2).mean(axis=1, keepdims=True) + 1e-5) * scale + bias
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-5)


def test_vector_exp_accuracy_and_range_ends() -> None:
    """`simd.vexp` (softmax's exponential): relative error within 2e-7 of float64 exp over the whole
    normal range, 0 for -inf and below -87 (masked keys must weigh exactly nothing, and no result is a
    denormal), inf past 88.8."""
    from numba import njit

    from sparsejit.kernels.simd import vexp, vload, vstore

    @njit
    def exp_all(x, out):  # type: ignore[no-untyped-def]
        for i in range(0, x.size, 16):
            vstore(out, i, vexp(vload(x, i)))

    x = np.concatenate([np.linspace(-87.0, 88.0, 200_000), [0.0, -0.0, 1e-30, -1e-30, 88.8, 100.0, np.inf,
                                                             -110.0, -200.0, -np.inf]]).astype(np.float32)
    x = np.concatenate([x, np.zeros(-x.size % 16, np.float32)])
    got = np.empty_like(x)
    exp_all(x, got)
    ref = np.exp(x.astype(np.float64))
    normal = (ref > np.finfo(np.float32).tiny) & (ref < np.finfo(np.float32).max)
    np.testing.assert_allclose(got[normal], ref[normal], rtol=2e-7, atol=0)
    assert np.all(got[x <= -110.0] == 0.0)
    assert np.all(np.isposinf(got[x >= 88.8]))
    # no denormal results (each costs a microcode assist on Intel): exactly 0 below -87, normal above
    y = np.concatenate([np.linspace(-104.0, -86.0, 4096), [-87.0001, -87.0, -86.9999]]).astype(np.float32)
    y = np.concatenate([y, np.zeros(-y.size % 16, np.float32)])
    low = np.empty_like(y)
    exp_all(y, low)
    assert np.all(low[y < -87.0] == 0.0)
    assert np.all(low[y >= -87.0] >= np.finfo(np.float32).tiny)
    np.testing.assert_allclose(low[y >= -87.0], np.exp(y[y >= -87.0].astype(np.float64)), rtol=2e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_rows_with_nan_or_infinities_match_onnxruntime(dtype) -> None:  # type: ignore[no-untyped-def]
    """A row masked everywhere with -inf, or holding NaN or +inf, is NaN (exp(x - max) is NaN at the max),
    as in onnxruntime; a row partly -inf is an ordinary softmax of the rest."""
    import onnxruntime as ort
    from onnx import TensorProto
    from onnx import helper as oh

    x = np.random.default_rng(0).standard_normal((6, 37)).astype(dtype)
    x[1, :] = -np.inf
    x[2, 5] = np.nan
    x[3, 4] = np.inf
    x[4, :10] = -np.inf
    x[5, 3], x[5, 7] = np.inf, -np.inf
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    graph = oh.make_graph([oh.make_node("Softmax", ["x"], ["y"], axis=-1)], "g",
                          [oh.make_tensor_value_info("x", elem, x.shape)],
                          [oh.make_tensor_value_info("y", elem, x.shape)])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    out = np.empty_like(x)
    softmax(x, out, -1)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_allclose(np.nan_to_num(out), np.nan_to_num(ref), rtol=1e-6, atol=1e-7)
