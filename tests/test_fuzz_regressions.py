"""Regressions found by the differential fuzzer (tests/fuzz_graphs.py), each a small hand-built graph
checked against onnxruntime with the fuzzer's tolerance (fp32: |error| <= 1e-5 + 1e-4 x max |reference|).

Each test names the bug it caught and where it was fixed.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

import sparsejit
from tests import fuzz_graphs as fg

pytest.importorskip("onnxruntime")


def _model(nodes: list[onnx.NodeProto], inputs: dict[str, tuple[int, ...]], outputs: list[str],
           consts: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "regression",
                          [oh.make_tensor_value_info(k, TensorProto.FLOAT, list(v)) for k, v in inputs.items()],
                          [oh.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
                          [nh.from_array(v, k) for k, v in consts.items()])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", fg.OPSET)])
    model.ir_version = fg.IR_VERSION
    return model


def _check(model: onnx.ModelProto, inputs: dict[str, tuple[int, ...]], seed: int = 0) -> None:
    """sparsejit and onnxruntime agree on two random feeds (the second catches state kept between runs)."""
    rng = np.random.default_rng(seed)
    engine = sparsejit.compile(model, input_shapes=inputs)
    session = fg.ort_session(model)
    names = [o.name for o in session.get_outputs()]
    for _ in range(2):
        feed = {k: rng.standard_normal(v).astype(np.float32) for k, v in inputs.items()}
        want = session.run(None, feed)
        got = engine.run(feed)
        for name, ref in zip(names, want, strict=True):
            msg = fg.compare(name, got[name], ref, peak=0.0, loose=False)
            assert msg is None, msg


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)


# ---------------------------------------------------------------------------------------------- fp32


def test_dual_matmul_bias_products_into_one_add() -> None:
    """(x @ W1 + b1) + (x @ W2 + b2): each product's epilogue matcher saw the other product as a residual
    and both claimed the final Add (KeyError at compile). Fixed by the claiming Rewriter (graph/rewrite.py)."""
    rng = np.random.default_rng(1)
    consts = {"w1": _w(rng, 17, 17), "b1": rng.standard_normal(17).astype(np.float32),
              "w2": _w(rng, 17, 17), "b2": rng.standard_normal(17).astype(np.float32)}
    nodes = [oh.make_node("MatMul", ["x", "w1"], ["p1"]), oh.make_node("Add", ["p1", "b1"], ["y1"]),
             oh.make_node("MatMul", ["x", "w2"], ["p2"]), oh.make_node("Add", ["p2", "b2"], ["y2"]),
             oh.make_node("Add", ["y1", "y2"], ["out"])]
    _check(_model(nodes, {"x": (2, 3, 17)}, ["out"], consts), {"x": (2, 3, 17)})


def test_dual_dynamic_int8_products_into_one_add() -> None:
    """The same overlap after quantize_dynamic: two DynamicQuantizeLinear/MatMulInteger products + bias
    (quant_fusion's epilogues, fixed the same way)."""
    rng = np.random.default_rng(2)
    consts: dict[str, np.ndarray] = {}
    nodes = [oh.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"])]
    for i in (1, 2):
        consts[f"w{i}"] = rng.integers(-127, 128, (17, 17)).astype(np.int8)
        consts[f"s{i}"] = np.array(0.01 * i, np.float32)
        consts[f"b{i}"] = rng.standard_normal(17).astype(np.float32)
        nodes += [oh.make_node("MatMulInteger", ["xq", f"w{i}", "xz"], [f"acc{i}"]),
                  oh.make_node("Cast", [f"acc{i}"], [f"f{i}"], to=TensorProto.FLOAT),
                  oh.make_node("Mul", ["xs", f"s{i}"], [f"sc{i}"]),
                  oh.make_node("Mul", [f"f{i}", f"sc{i}"], [f"p{i}"]),
                  oh.make_node("Add", [f"p{i}", f"b{i}"], [f"y{i}"])]
    nodes.append(oh.make_node("Add", ["y1", "y2"], ["out"]))
    _check(_model(nodes, {"x": (2, 3, 17)}, ["out"], consts), {"x": (2, 3, 17)})


@pytest.mark.parametrize("start,end,step", [(-20, np.iinfo(np.int64).min, -1), (-100, -100, -1), (100, -100, -2),
                                            (-1, -20, -1), (3, 1, -1), (-30, 4, 2)])
def test_slice_clamps_like_onnx_for_negative_steps(start: int, end: int, step: int) -> None:
    """fuzz seed 179 (quick): Slice with a negative step and a start before the beginning selects from
    index 0 in ONNX (start clamped to [0, n-1], end to [-1, n-1]); Python slicing, which the lowering
    used, makes it empty, and the copy kernel then read out of bounds (garbage output). Fixed in
    plan/ops_tensor.py (onnx_slice)."""
    consts = {"starts": np.array([start], np.int64), "ends": np.array([end], np.int64),
              "axes": np.array([-1], np.int64), "steps": np.array([step], np.int64)}
    nodes = [oh.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["s"]),
             oh.make_node("Relu", ["s"], ["out"])]
    _check(_model(nodes, {"x": (2, 5, 17)}, ["out", "s"], consts), {"x": (2, 5, 17)})


def test_qdq_matmul_with_one_element_1d_scale() -> None:
    """fuzz seeds 41, 43, 46, ... (quick): QuantizeLinear/DequantizeLinear with scale shape [1] (valid
    per-tensor quantisation, written by some exporters) around a MatMul with a DequantizeLinear'd weight:
    quant_fusion called float() on the [1]-shaped scale (TypeError under numpy 2). Fixed in
    graph/rewrite.scalar_constant (0-d for any one-element constant)."""
    rng = np.random.default_rng(3)
    consts = {"s": np.array([0.05], np.float32), "z": np.array(0, np.int8),
              "wq": rng.integers(-127, 128, (17, 5)).astype(np.int8), "ws": np.array(0.002, np.float32)}
    nodes = [oh.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             oh.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
             oh.make_node("DequantizeLinear", ["wq", "ws"], ["w"]),
             oh.make_node("MatMul", ["dq", "w"], ["out"])]
    _check(_model(nodes, {"x": (3, 17)}, ["out"], consts), {"x": (3, 17)})


def test_constant_slice_negative_step_from_before_the_start() -> None:
    """Found while checking the Slice fix above: the same Slice on a constant (folded at compile time by
    the ONNX reference implementation, which slices like numpy) gave [2, 0] for onnxruntime's [2, 1].
    Fixed by a Slice folding override with ONNX's clamping (graph/reference.py)."""
    consts = {"c": np.arange(5, dtype=np.float32), "starts": np.array([-8], np.int64),
              "ends": np.array([-8], np.int64), "axes": np.array([0], np.int64), "steps": np.array([-1], np.int64)}
    nodes = [oh.make_node("Slice", ["c", "starts", "ends", "axes", "steps"], ["s"]),
             oh.make_node("Add", ["x", "s"], ["out"])]
    _check(_model(nodes, {"x": (2, 1)}, ["out"], consts), {"x": (2, 1)})
