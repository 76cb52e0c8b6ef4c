"""Graph passes on small hand-built graphs: Before -> Expected (the style of TVM's pass tests), and
the rewrite infrastructure they stand on."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

import sparsejit
from sparsejit.graph import elementwise_chains, matmul_epilogue, quant_fusion, redundant_requantize
from sparsejit.graph.ir import Graph, Node, Value
from sparsejit.graph.onnx_import import load_onnx
from sparsejit.graph.pass_context import PassContext
from sparsejit.graph.passes import PASSES
from sparsejit.graph.rewrite import GraphRewriteError, Rewriter, check_well_formed, remove_dead_nodes
from sparsejit.graph.specialise import fold_constants, specialise

RNG = np.random.default_rng(7)
F32 = np.dtype(np.float32)


def _structure(graph: Graph) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """(op, inputs, outputs) of every node, with generated names (bias copies) shown by their role."""
    out = []
    for n in graph.nodes:
        inputs = tuple("<bias>" if name.endswith("/bias") else name for name in n.inputs)
        out.append((n.op_type, inputs, tuple(n.outputs)))
    return out


def _graph(nodes: list[Node], inputs: dict[str, tuple[int, ...]], outputs: list[str],
           consts: dict[str, np.ndarray]) -> Graph:
    graph = Graph([Value(k, F32, s) for k, s in inputs.items()], [Value(o, F32, None) for o in outputs], nodes,
                  dict(consts), {"": 17})
    return specialise(graph, inputs)


def _w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


# ---- rewrite infrastructure -------------------------------------------------------------------


def test_a_node_can_be_claimed_only_once() -> None:
    a, b, c = (Node("Relu", [x], [y]) for x, y in (("x", "a"), ("a", "b"), ("b", "c")))
    graph = Graph([Value("x", F32, (2,))], [Value("c", F32, (2,))], [a, b, c], {}, {"": 17})
    rewriter = Rewriter(graph)
    assert rewriter.replace([a, b], Node("Fused", ["x"], ["b"]))
    assert not rewriter.replace([b, c], Node("Fused", ["a"], ["c"]))  # b is taken: refused, nothing changed
    assert not rewriter.is_claimed(c)
    assert [n.op_type for n in rewriter.finish().nodes] == ["Fused", "Relu"]


def test_an_ill_formed_graph_is_reported_with_the_pass() -> None:
    graph = Graph([Value("x", F32, (2,))], [Value("y", F32, (2,))],
                  [Node("Relu", ["a1"], ["y"], name="r")], {}, {"": 17})
    with pytest.raises(GraphRewriteError, match=r"reads 'a1'.*after pass 'demo'"):
        check_well_formed(graph, after="demo")


def test_dead_nodes_and_their_constants_are_removed() -> None:
    graph = Graph([Value("x", F32, (2,))], [Value("y", F32, (2,))],
                  [Node("Add", ["x", "c"], ["dead"]), Node("Relu", ["x"], ["y"])], {"c": _w(2)}, {"": 17})
    graph = remove_dead_nodes(graph)
    assert _structure(graph) == [("Relu", ("x",), ("y",))] and not graph.initializers


# ---- matmul_epilogue ----------------------------------------------------------------------------


def test_two_products_summed_by_one_add_each_fuse_once() -> None:
    """(x@W1+b1) + (x@W2+b2): both products' epilogues reach the final Add; only one may take it."""
    before = _graph([Node("MatMul", ["x", "W1"], ["m1"], name="mm1"), Node("Add", ["m1", "b1"], ["a1"]),
                     Node("MatMul", ["x", "W2"], ["m2"], name="mm2"), Node("Add", ["m2", "b2"], ["a2"]),
                     Node("Add", ["a1", "a2"], ["y"])],
                    {"x": (4, 8)}, ["y"], {"W1": _w(8, 16), "W2": _w(8, 16), "b1": _w(16), "b2": _w(16)})
    after = matmul_epilogue.run(before, None)
    expected = [("FusedMatMul", ("x", "W2", "<bias>", ""), ("a2",)),
                ("FusedMatMul", ("x", "W1", "<bias>", "a2"), ("y",))]
    assert _structure(after) == expected
    check_well_formed(after)


def test_an_add_feeding_two_consumers_is_not_taken_as_residual() -> None:
    before = _graph([Node("MatMul", ["x", "W"], ["m"]), Node("Add", ["m", "b"], ["a"]),
                     Node("Relu", ["a"], ["r1"]), Node("Sigmoid", ["a"], ["r2"])],
                    {"x": (4, 8)}, ["r1", "r2"], {"W": _w(8, 16), "b": _w(16)})
    after = matmul_epilogue.run(before, None)
    assert _structure(after) == [("FusedMatMul", ("x", "W", "<bias>", ""), ("a",)),
                                 ("Relu", ("a",), ("r1",)), ("Sigmoid", ("a",), ("r2",))]


# ---- quant_fusion -------------------------------------------------------------------------------


def _qdq_product(x: str, name: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    wq = RNG.integers(-127, 128, (8, 16)).astype(np.int8)
    nodes = [oh.make_node("QuantizeLinear", [x, "xs", "xz"], [f"{name}_q"]),
             oh.make_node("DequantizeLinear", [f"{name}_q", "xs", "xz"], [f"{name}_dq"]),
             oh.make_node("DequantizeLinear", [f"{name}_wq", f"{name}_ws"], [f"{name}_w"]),
             oh.make_node("MatMul", [f"{name}_dq", f"{name}_w"], [f"{name}_m"]),
             oh.make_node("Add", [f"{name}_m", f"{name}_b"], [f"{name}_a"])]
    inits = [nh.from_array(wq, f"{name}_wq"), nh.from_array(np.array(0.02, np.float32), f"{name}_ws"),
             nh.from_array(_w(16), f"{name}_b")]
    return nodes, inits


def test_two_int8_products_summed_by_one_add_match_onnxruntime(tmp_path) -> None:
    n1, i1 = _qdq_product("x", "p1")
    n2, i2 = _qdq_product("x", "p2")
    nodes = n1 + n2 + [oh.make_node("Add", ["p1_a", "p2_a"], ["y"])]
    inits = i1 + i2 + [nh.from_array(np.array(0.05, np.float32), "xs"), nh.from_array(np.array(128, np.uint8), "xz")]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    ir = quant_fusion.run(specialise(fold_constants(load_onnx(str(path))), {"x": (4, 8)}), None)
    check_well_formed(ir)
    assert [n.op_type for n in ir.nodes] == ["QMatMul", "QMatMul"]
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(str(path), so).run(None, {"x": x})[0]
    got = sparsejit.compile(str(path), input_shapes={"x": (4, 8)}).run({"x": x})["y"]
    # the int8 products are exact; the float epilogue (scale, bias, sum) rounds differently: a few ulp
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def _deferred_weight_model(tmp_path, k: int, n: int, transpose: bool):  # type: ignore[no-untyped-def]
    """x -> Q -> DQ -> MatMul with an int8 weight of k x n (dequantized, then transposed when asked)."""
    wq = RNG.integers(-127, 128, (n, k) if transpose else (k, n)).astype(np.int8)
    nodes = [oh.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             oh.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xdq"]),
             oh.make_node("DequantizeLinear", ["wq", "ws"], ["wf"])]
    if transpose:
        nodes.append(oh.make_node("Transpose", ["wf"], ["wt"], perm=[1, 0]))
    nodes.append(oh.make_node("MatMul", ["xdq", "wt" if transpose else "wf"], ["y"]))
    inits = [nh.from_array(wq, "wq"), nh.from_array(np.array(0.01, np.float32), "ws"),
             nh.from_array(np.array(0.05, np.float32), "xs"), nh.from_array(np.array(128, np.uint8), "xz")]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [4, k])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [4, n])], inits)
    path = tmp_path / f"deferred{int(transpose)}.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path


def _assert_matches_literal_onnxruntime(path, shape: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    """sparsejit's output equals onnxruntime's run of the graph as written (optimisations off)."""
    x = RNG.standard_normal(shape).astype(np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(str(path), so).run(None, {"x": x})[0]
    got = sparsejit.compile(str(path), input_shapes={"x": shape}).run({"x": x})["y"]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_a_large_int8_weight_is_never_dequantized_when_an_int8_product_takes_it(tmp_path) -> None:
    """Before: DQ(W int8 128x256) -> MatMul. The load-time fold keeps the DequantizeLinear (no float32
    copy); quant_fusion reads the int8 weight through it. Expected: one QMatMul on `wq`, no float32 weight."""
    from sparsejit.graph.specialise import DEFERRED_DEQUANTIZE_MIN_ELEMENTS

    assert 128 * 256 >= DEFERRED_DEQUANTIZE_MIN_ELEMENTS
    path = _deferred_weight_model(tmp_path, 128, 256, transpose=False)
    folded = fold_constants(load_onnx(str(path)))
    assert "wf" not in folded.initializers and [n.op_type for n in folded.nodes].count("DequantizeLinear") == 2
    ir = quant_fusion.run(specialise(folded, {"x": (4, 128)}), None)
    check_well_formed(ir)
    assert [n.op_type for n in ir.nodes] == ["QMatMul"]
    assert not [name for name, a in ir.initializers.items() if a.dtype == np.float32 and a.size > 1000]
    _assert_matches_literal_onnxruntime(path, (4, 128))


def test_a_deferred_weight_no_int8_product_takes_is_folded_after_the_fusions(tmp_path) -> None:
    """Before: DQ(W int8) -> Transpose -> MatMul (the int8 fusion does not look through the Transpose).
    Expected after quant_fusion: the DequantizeLinear and the Transpose folded into one float32 constant
    (no runtime dequantisation), outputs equal to onnxruntime's."""
    path = _deferred_weight_model(tmp_path, 128, 256, transpose=True)
    ir = quant_fusion.run(specialise(fold_constants(load_onnx(str(path))), {"x": (4, 128)}), None)
    check_well_formed(ir)
    ops = [n.op_type for n in ir.nodes]
    assert "Transpose" not in ops and ops.count("DequantizeLinear") == 1  # the activation's, not the weight's
    weight = ir.initializers["wt"]
    assert weight.dtype == np.float32 and weight.shape == (128, 256) and ir.value_info["wt"].shape == (128, 256)
    _assert_matches_literal_onnxruntime(path, (4, 128))


def test_the_five_node_graph_matches_onnxruntime(tmp_path) -> None:
    w1, w2, b1, b2 = _w(8, 16), _w(8, 16), _w(16), _w(16)
    nodes = [oh.make_node("MatMul", ["x", "W1"], ["m1"]), oh.make_node("Add", ["m1", "b1"], ["a1"]),
             oh.make_node("MatMul", ["x", "W2"], ["m2"]), oh.make_node("Add", ["m2", "b2"], ["a2"]),
             oh.make_node("Add", ["a1", "a2"], ["y"])]
    inits = [nh.from_array(v, k) for k, v in (("W1", w1), ("W2", w2), ("b1", b1), ("b2", b2))]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])], inits)
    path = tmp_path / "five.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    ref = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    got = sparsejit.compile(str(path), input_shapes={"x": (4, 8)}).run({"x": x})["y"]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)  # fp32 sums of 8 products, reordered


# ---- elementwise_chains -------------------------------------------------------------------------


def test_a_chain_fuses_and_a_value_read_twice_ends_it() -> None:
    before = _graph([Node("Mul", ["x", "s"], ["a"]), Node("Tanh", ["a"], ["b"]), Node("Add", ["b", "x"], ["c"]),
                     Node("Exp", ["c"], ["d"]), Node("Neg", ["c"], ["e"]), Node("Add", ["d", "e"], ["y"])],
                    {"x": (2, 3)}, ["y"], {"s": np.array(0.5, np.float32)})
    after = elementwise_chains.run(before, None)
    got = [(n.op_type, tuple(n.inputs), tuple(n.outputs)) for n in after.nodes]
    assert got == [("FusedElementwise", ("x", "s"), ("c",)), ("Neg", ("c",), ("e",)),
                   ("FusedElementwise", ("c", "e"), ("y",))]  # Exp joins the Add that reads it; Neg cannot join too
    assert [n.op_type for n in after.nodes[0].attrs["nodes"]] == ["Mul", "Tanh", "Add"]
    assert [n.op_type for n in after.nodes[2].attrs["nodes"]] == ["Exp", "Add"]


def test_every_pass_module_has_a_name_and_run() -> None:
    names = [module.NAME for module in PASSES]
    assert len(set(names)) == len(names) and all(callable(module.run) for module in PASSES)


# ---- redundant_requantize -----------------------------------------------------------------------


def _fake_quant(x: str, y: str, scale: str = "s", zero: str = "z") -> list[Node]:
    return [Node("QuantizeLinear", [x, scale, zero], [f"{y}_q"]),
            Node("DequantizeLinear", [f"{y}_q", scale, zero], [y])]


_GRID = {"s": np.array(0.05, np.float32), "z": np.array(128, np.uint8), "s2": np.array(0.1, np.float32)}


def test_requantising_a_moved_dequantized_value_on_its_own_grid_is_dropped() -> None:
    before = _graph(_fake_quant("x", "a") + [Node("Transpose", ["a"], ["t"], {"perm": [1, 0]})]
                    + _fake_quant("t", "b") + [Node("Reshape", ["b", "shape"], ["r"])]
                    + _fake_quant("r", "c") + [Node("Relu", ["c"], ["y"])],
                    {"x": (4, 6)}, ["y"], {**_GRID, "shape": np.array([6, 4], np.int64)})
    after = redundant_requantize.run(before, None)
    assert _structure(after) == [("QuantizeLinear", ("x", "s", "z"), ("a_q",)),
                                 ("DequantizeLinear", ("a_q", "s", "z"), ("a",)),
                                 ("Transpose", ("a",), ("t",)), ("Reshape", ("t", "shape"), ("r",)),
                                 ("Relu", ("r",), ("y",))]
    check_well_formed(after)


@pytest.mark.parametrize("case", ["other scale", "raw input", "graph output"])
def test_requantising_onto_another_grid_or_from_raw_values_stays(case: str) -> None:
    second = _fake_quant("t", "b", scale="s2" if case == "other scale" else "s")
    first = [] if case == "raw input" else _fake_quant("x", "a")
    nodes = first + [Node("Transpose", ["x" if case == "raw input" else "a"], ["t"], {"perm": [1, 0]})] + second
    outputs = ["b"] if case == "graph output" else ["y"]
    if case != "graph output":
        nodes.append(Node("Relu", ["b"], ["y"]))
    before = _graph(nodes, {"x": (4, 6)}, outputs, _GRID)
    expected = _structure(before)
    assert _structure(redundant_requantize.run(before, None)) == expected


def test_dropped_requantisation_matches_onnxruntime(tmp_path) -> None:
    """x -> Q/DQ -> Transpose -> Q/DQ -> Reshape -> Q/DQ -> MatMul, with values past the int8 range
    (saturating) and exact .5 ties: sparsejit without the two inner pairs against onnxruntime with them."""
    s, z = nh.from_array(_GRID["s"], "s"), nh.from_array(_GRID["z"], "z")
    w = nh.from_array(_w(12, 5), "W")
    shape = nh.from_array(np.array([2, 12], np.int64), "shape")
    def pair(x: str, y: str) -> list[onnx.NodeProto]:
        return [oh.make_node("QuantizeLinear", [x, "s", "z"], [y + "q"]),
                oh.make_node("DequantizeLinear", [y + "q", "s", "z"], [y])]

    nodes = (pair("x", "a") + [oh.make_node("Transpose", ["a"], ["t"], perm=[0, 2, 1])] + pair("t", "td")
             + [oh.make_node("Reshape", ["td", "shape"], ["r"])] + pair("r", "rd")
             + [oh.make_node("MatMul", ["rd", "W"], ["y"])])
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])], [s, z, w, shape])
    path = tmp_path / "m.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), str(path))
    x = (RNG.standard_normal((2, 3, 4)) * 5).astype(np.float32)
    x[0, 0, :2] = [0.025, -0.075]  # ties: round half to even
    engine = sparsejit.compile(path)
    ours = engine.run({"x": x})["y"]
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    assert sum(n.op_type == "QuantizeLinear" for n in redundant_requantize.run(
        specialise(load_onnx(onnx.load(str(path))), {"x": (2, 3, 4)}), None).nodes) == 1


def _qdq(src: str, dst: str, grid: str) -> list[onnx.NodeProto]:
    """ONNX QuantizeLinear -> DequantizeLinear from `src` to `dst` on the grid of initializers s{grid}, z{grid}."""
    return [oh.make_node("QuantizeLinear", [src, f"s{grid}", f"z{grid}"], [dst + "_q"]),
            oh.make_node("DequantizeLinear", [dst + "_q", f"s{grid}", f"z{grid}"], [dst])]


def _rounded_product_model(tmp_path):  # type: ignore[no-untyped-def]
    """x -> Q/DQ -> MatMul(DQ(W int8)) -> Q/DQ -> + bias -> Q/DQ -> + r -> Q/DQ -> y: a QDQ product with
    its bias and residual each rounded, as quantize_static writes it."""
    w = RNG.integers(-127, 128, (32, 48)).astype(np.int8)
    inits = [nh.from_array(w, "Wq"), nh.from_array(np.array(0.01, np.float32), "sw"),
             nh.from_array(np.array(0, np.int8), "zw"), nh.from_array(_w(48), "bias")]
    for i, (s, z) in enumerate([(0.03, 128), (0.05, 120), (0.06, 131), (0.08, 126)]):
        inits += [nh.from_array(np.array(s, np.float32), f"s{i}"), nh.from_array(np.array(z, np.uint8), f"z{i}")]
    nodes = (_qdq("x", "xd", "0") + [oh.make_node("DequantizeLinear", ["Wq", "sw", "zw"], ["W"]),
                                       oh.make_node("MatMul", ["xd", "W"], ["m"])]
             + _qdq("m", "md", "1") + [oh.make_node("Add", ["md", "bias"], ["a"])] + _qdq("a", "ad", "2")
             + [oh.make_node("Add", ["ad", "r"], ["b"])] + _qdq("b", "y", "3"))
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [8, 32]),
                                       oh.make_tensor_value_info("r", TensorProto.FLOAT, [8, 48])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [8, 48])], inits)
    path = tmp_path / "m.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("allowed", [True, False])
def test_rounded_bias_and_residual_fuse_into_the_int8_product(tmp_path, allowed: bool) -> None:
    path = _rounded_product_model(tmp_path)
    graph = specialise(fold_constants(load_onnx(onnx.load(str(path)))), {"x": (8, 32), "r": (8, 48)})
    ctx = PassContext(attention_head_multiple=16, qkv_merge_max_rows=None, int8_fake_quant_epilogue=allowed)
    after = quant_fusion.run(graph, ctx)
    products = [n for n in after.nodes if n.op_type == "QMatMul"]
    assert len(products) == 1
    if allowed:
        assert [n.op_type for n in after.nodes] == ["QMatMul"]
        assert products[0].inputs[4] and products[0].inputs[5] == "r"
        assert [p[0] for p in products[0].attrs["fake_quant"]] == pytest.approx([0.05, 0.06, 0.08])
        assert products[0].attrs["output_grid"][:2] == pytest.approx([0.08, 126])
    else:
        assert "fake_quant" not in products[0].attrs and len(after.nodes) > 1


def _rounded_gelu_model(tmp_path):  # type: ignore[no-untyped-def]
    """x -> Q/DQ -> MatMul(DQ(W int8)) -> Q/DQ -> + bias -> Q/DQ -> GELU with erf(.) and 1 + erf(.) each
    rounded (Div, Erf, Q/DQ, Add 1, Q/DQ, Mul, Mul 0.5: quantize_static's default GELU) -> y."""
    w = RNG.integers(-127, 128, (32, 48)).astype(np.int8)
    inits = [nh.from_array(w, "Wq"), nh.from_array(np.array(0.01, np.float32), "sw"),
             nh.from_array(np.array(0, np.int8), "zw"), nh.from_array(_w(48), "bias"),
             nh.from_array(np.array(1.4142135, np.float32), "sqrt2"), nh.from_array(np.array(1.0, np.float32), "one"),
             nh.from_array(np.array(0.5, np.float32), "half")]
    for i, (s, z, dt) in enumerate([(0.03, 128, np.uint8), (0.05, 120, np.uint8), (0.06, 131, np.uint8),
                                     (1 / 127, 0, np.int8), (2 / 255, 0, np.uint8)]):
        inits += [nh.from_array(np.array(s, np.float32), f"s{i}"), nh.from_array(np.array(z, dt), f"z{i}")]
    nodes = (_qdq("x", "xd", "0") + [oh.make_node("DequantizeLinear", ["Wq", "sw", "zw"], ["W"]),
                                       oh.make_node("MatMul", ["xd", "W"], ["m"])]
             + _qdq("m", "md", "1") + [oh.make_node("Add", ["md", "bias"], ["a"])] + _qdq("a", "ad", "2")
             + [oh.make_node("Div", ["ad", "sqrt2"], ["d"]), oh.make_node("Erf", ["d"], ["e"])] + _qdq("e", "ed", "3")
             + [oh.make_node("Add", ["ed", "one"], ["p"])] + _qdq("p", "pd", "4")
             + [oh.make_node("Mul", ["ad", "pd"], ["g"]), oh.make_node("Mul", ["g", "half"], ["y"])])
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [8, 32])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [8, 48])], inits)
    path = tmp_path / "gelu.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), str(path))
    return path


def test_rounded_gelu_fuses_into_the_int8_product(tmp_path) -> None:
    """Before: MatMul, bias and GELU with five Q -> DQ roundings. Expected: one QMatMul, activation gelu_erf,
    rounding points 0, 1 (product, biased sum), 3, 4 (erf, 1 + erf)."""
    graph = specialise(fold_constants(load_onnx(onnx.load(str(_rounded_gelu_model(tmp_path))))), {"x": (8, 32)})
    ctx = PassContext(attention_head_multiple=16, qkv_merge_max_rows=None, int8_fake_quant_epilogue=True)
    after = quant_fusion.run(graph, ctx)
    assert [n.op_type for n in after.nodes] == ["QMatMul"]
    product = after.nodes[0]
    assert product.attrs["activation"] == "gelu_erf" and product.outputs == ["y"]
    fq = product.attrs["fake_quant"]
    assert [p and p[0] for p in fq] == pytest.approx([0.05, 0.06, None, 1 / 127, 2 / 255])
    assert fq[3][1:] == [-128.0, 127.0] and fq[4][1:] == [0.0, 255.0]


def test_gelu_rounded_elsewhere_is_not_fused(tmp_path) -> None:
    """A rounding of x / sqrt 2 (not one the kernel has a point for) keeps the GELU out of the product."""
    model = onnx.load(str(_rounded_gelu_model(tmp_path)))
    nodes = list(model.graph.node)
    div = next(i for i, n in enumerate(nodes) if n.op_type == "Div")
    nodes[div + 1].input[0] = "dd"  # Erf reads a rounded quotient
    nodes[div + 1:div + 1] = [oh.make_node("QuantizeLinear", ["d", "s3", "z3"], ["dd_q"]),
                              oh.make_node("DequantizeLinear", ["dd_q", "s3", "z3"], ["dd"])]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    graph = specialise(fold_constants(load_onnx(model)), {"x": (8, 32)})
    ctx = PassContext(attention_head_multiple=16, qkv_merge_max_rows=None, int8_fake_quant_epilogue=True)
    after = quant_fusion.run(graph, ctx)
    product = next(n for n in after.nodes if n.op_type == "QMatMul")
    assert product.attrs["activation"] is None and "Erf" in [n.op_type for n in after.nodes]


def test_rounded_gelu_matches_onnxruntime(tmp_path) -> None:
    """Against onnxruntime's literal graph: the int8 sums are exact where the float MatMul rounds, and the
    kernel's erf is not onnxruntime's, so a rounding may land one step away; elsewhere equal within 1e-5."""
    path = _rounded_gelu_model(tmp_path)
    x = (RNG.standard_normal((8, 32)) * 2).astype(np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    engine = sparsejit.compile(path)
    assert [n.op_type for n in next(iter(engine._plans.values())).step_nodes] == ["QMatMul"]
    got = engine.run({"x": x})["y"]
    diff = np.abs(got - ref)
    close = diff <= 1e-5 * (1 + np.abs(ref))
    assert close.mean() > 0.95
    # one step of the biased sum's grid moves y by at most 1.13 steps; one of erf's or the sum's by |x| / 2 steps
    bound = 1.13 * 0.06 + 0.6 * (np.abs(ref) + 0.1) * (1 / 127 + 2 / 255)
    assert np.all(diff[~close] <= bound[~close])


def test_rounded_epilogue_matches_onnxruntime(tmp_path) -> None:
    """Against onnxruntime's literal graph (every pair in float): the int8 product sums exactly where the
    float MatMul rounds, so an element may land one step of the last grid away, no more."""
    path = _rounded_product_model(tmp_path)
    feed = {"x": (RNG.standard_normal((8, 32)) * 2).astype(np.float32),
            "r": RNG.standard_normal((8, 48)).astype(np.float32)}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = sparsejit.compile(path).run(feed)["y"]
    steps = np.abs(got - ref) / np.float32(0.08)
    assert steps.max() <= 1.0001 and (steps > 0.5).mean() < 0.02
