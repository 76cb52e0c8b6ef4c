"""Generated elementwise kernels: broadcast operands read at their own size, and float32 Erf."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

import sparsejit
from sparsejit.kernels.elementwise import elementwise_step


@pytest.mark.parametrize("shapes", [((4, 5, 6), (6,)), ((4, 5, 6), (4, 1, 6)), ((4, 5, 6), (5, 1)),
                                    ((1, 5, 6), (4, 1, 1)), ((7,), ())])
def test_broadcast_operands_match_numpy(shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
    rng = np.random.default_rng(len(shapes[1]))
    a = rng.standard_normal(shapes[0]).astype(np.float32)
    b = rng.standard_normal(shapes[1]).astype(np.float32)
    expected = a * 2 - b
    out = np.empty(expected.shape, np.float32)
    elementwise_step("({0} * np.float32(2.0) - {1})", [a, b], out)()
    np.testing.assert_array_equal(out, expected)
    # an operand already broadcast by numpy (zero strides) is read the same way
    out2 = np.empty_like(out)
    elementwise_step("({0} * np.float32(2.0) - {1})", [a, np.broadcast_to(b, expected.shape)], out2)()
    np.testing.assert_array_equal(out2, expected)


def _erf_model() -> bytes:
    graph = oh.make_graph([oh.make_node("Erf", ["x"], ["e"]), oh.make_node("Mul", ["e", "two"], ["y"])], "g",
                          [oh.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
                          [nh.from_array(np.array(2.0, np.float32), "two")])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_float32_erf_accuracy_and_special_values() -> None:
    x = np.concatenate([np.linspace(-6, 6, 24001), [0.0, -0.0, 1e-30, -1e-30, 3.9999, 4.0, 4.5, 30.0, -30.0,
                                                    np.inf, -np.inf, np.nan]]).astype(np.float32)
    got = sparsejit.Engine(_erf_model(), input_shapes={"x": x.shape}).run({"x": x})["y"] / 2
    ref = np.array([math.erf(float(v)) if np.isfinite(v) else math.copysign(1.0, v) if np.isinf(v) else np.nan
                    for v in x])
    assert np.isnan(got[-1])
    np.testing.assert_allclose(got[:-1], ref[:-1], rtol=0, atol=5e-7)
