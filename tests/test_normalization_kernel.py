"""The vectorised LayerNorm row kernel against float64 numpy, over every path of its row loop."""

from __future__ import annotations

import numpy as np
import pytest

from sparsejit.kernels.normalization import layer_norm_rows_f32


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
