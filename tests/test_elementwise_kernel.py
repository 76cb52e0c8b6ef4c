"""Generated elementwise kernels: broadcast operands read at their own size, and float32 Erf."""

from __future__ import annotations

import math
from pathlib import Path

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


def test_every_elementwise_op_of_the_traits_table_has_a_kernel_expression() -> None:
    """The graph fuses what `op_traits.ELEMENTWISE` lists; the lowering must have an expression for each."""
    from sparsejit.graph import op_traits
    from sparsejit.plan.ops_elementwise import ELEMENTWISE

    assert set(op_traits.ELEMENTWISE) <= set(ELEMENTWISE), set(op_traits.ELEMENTWISE) - set(ELEMENTWISE)


def test_one_kernel_serves_chains_that_differ_only_in_their_constants(tmp_path) -> None:
    """Constants are kernel arguments, not literals: two chains (x * s + z) * x with other s, z (two
    layers) compile to one kernel, and each still computes with its own constants (vs onnxruntime)."""
    import onnxruntime as ort

    from sparsejit.kernels import codegen

    nodes, inits = [], []
    for i, (s, z) in enumerate(((0.5, 1.0), (0.25, -3.0))):
        nodes += [oh.make_node("Mul", ["x", f"s{i}"], [f"m{i}"]), oh.make_node("Add", [f"m{i}", f"z{i}"], [f"a{i}"]),
                  oh.make_node("Mul", [f"a{i}", "x"], [f"y{i}"])]
        inits += [nh.from_array(np.array(s, np.float32), f"s{i}"), nh.from_array(np.array(z, np.float32), f"z{i}")]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
                          [oh.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [3, 5]) for i in range(2)], inits)
    path = tmp_path / "m.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    before = set(codegen._loaded)
    engine = sparsejit.compile(str(path), input_shapes={"x": (3, 5)})
    new = [name for name in set(codegen._loaded) - before if name.startswith("sparsejit_gen_ew_")]
    x = np.linspace(-2, 2, 15, dtype=np.float32).reshape(3, 5)
    got, ref = engine.run({"x": x}), ort.InferenceSession(str(path)).run(None, {"x": x})
    for i in range(2):
        np.testing.assert_array_equal(got[f"y{i}"], ref[i])  # three float32 operations, same order: exact
    assert len(new) == 1, new
    source = Path(codegen._loaded[new[0]].__file__).read_text()
    assert not any(literal in source for literal in ("0.25", "0.5", "3.0")), source
