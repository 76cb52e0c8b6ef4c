"""`graph.smooth_quant`: a per-channel Mul in front of static int8 products folds into their quantiser.

Before/Expected on small graphs, and the compiled model against onnxruntime's literal run of the file.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

import sparsejit
from sparsejit.graph import quant_fusion, smooth_quant
from sparsejit.graph.onnx_import import load_onnx
from sparsejit.graph.rewrite import check_well_formed
from sparsejit.graph.specialise import fold_constants, specialise

RNG = np.random.default_rng(11)
K, N, ROWS = 24, 16, 6


def _model(tmp_path, scale_shape: tuple[int, ...] = (1, K), extra_reader: bool = False):  # type: ignore[no-untyped-def]
    """x -> Mul(c) -> two QDQ int8 products (NNCF's SmoothQuant form); `extra_reader`: an Add reads x * c too."""
    nodes = [oh.make_node("Mul", ["x", "c"], ["xc"]),
             oh.make_node("QuantizeLinear", ["xc", "xs", "xz"], ["xq"]),
             oh.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xdq"])]
    inits = [nh.from_array(RNG.uniform(0.2, 3.0, scale_shape).astype(np.float32), "c"),
             nh.from_array(np.array(0.04, np.float32), "xs"), nh.from_array(np.array(120, np.uint8), "xz")]
    outputs = []
    for p in ("a", "b"):
        nodes += [oh.make_node("DequantizeLinear", [f"{p}_wq", f"{p}_ws"], [f"{p}_w"]),
                  oh.make_node("MatMul", ["xdq", f"{p}_w"], [f"y_{p}"])]
        inits += [nh.from_array(RNG.integers(-127, 128, (K, N)).astype(np.int8), f"{p}_wq"),
                  nh.from_array(np.array(0.01, np.float32), f"{p}_ws")]
        outputs.append(oh.make_tensor_value_info(f"y_{p}", TensorProto.FLOAT, [ROWS, N]))
    if extra_reader:
        nodes.append(oh.make_node("Add", ["xc", "x"], ["y_c"]))
        outputs.append(oh.make_tensor_value_info("y_c", TensorProto.FLOAT, [ROWS, K]))
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [ROWS, K])], outputs, inits)
    path = tmp_path / "smooth.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path


def _fused(path):  # type: ignore[no-untyped-def]
    graph = quant_fusion.run(specialise(fold_constants(load_onnx(str(path))), {"x": (ROWS, K)}), None)
    graph = smooth_quant.run(graph)
    check_well_formed(graph)
    return graph


def test_before_expected(tmp_path) -> None:
    """Before: x -> Mul(c [1, K]) -> Q -> DQ -> MatMul x 2. Expected: QMatMul(x, ..., c) x 2, no Mul."""
    graph = _fused(_model(tmp_path))
    assert [n.op_type for n in graph.nodes] == ["QMatMul", "QMatMul"]
    for node in graph.nodes:
        assert node.inputs[0] == "x" and node.attrs["mode"] == "static"
        mult = graph.initializers[node.inputs[smooth_quant.MULTIPLIER_INPUT]]
        assert mult.shape == (K,) and mult.dtype == np.float32
    assert graph.nodes[0].inputs[6] == graph.nodes[1].inputs[6]  # one quantisation serves both


@pytest.mark.parametrize("case", ["another reader", "per-row scale", "scalar scale"])
def test_the_mul_stays_when_it_is_not_a_per_channel_scale_read_only_by_products(tmp_path, case: str) -> None:
    shape = {"another reader": (1, K), "per-row scale": (ROWS, 1), "scalar scale": (1,)}[case]
    graph = _fused(_model(tmp_path, shape, extra_reader=case == "another reader"))
    assert "Mul" in [n.op_type for n in graph.nodes]
    assert all(len(n.inputs) <= smooth_quant.MULTIPLIER_INPUT for n in graph.nodes if n.op_type == "QMatMul")


def test_folded_model_matches_literal_onnxruntime(tmp_path) -> None:
    """The quantiser computes x * c and rounds as the graph's Mul -> QuantizeLinear do: the int8 products see
    the same integers, the outputs differ only by the float epilogue's rounding."""
    path = _model(tmp_path)
    x = (RNG.standard_normal((ROWS, K)) * 2).astype(np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    engine = sparsejit.compile(str(path), input_shapes={"x": (ROWS, K)})
    assert "Mul" not in [n.op_type for n in next(iter(engine._plans.values())).step_nodes]
    got = engine.run({"x": x})
    for name, expected in zip(("y_a", "y_b"), ref, strict=True):
        np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-5)
