"""Common-subexpression elimination (`sparsejit.graph.cse`)."""

from __future__ import annotations

import numpy as np

from sparsejit.graph import cse
from sparsejit.graph.ir import Graph, Node, Value
from sparsejit.plan.plan import Plan


def _graph(second_fill: float = -np.inf, output_second: bool = False) -> Graph:
    """cond -> Where(cond, 0, -inf) per "layer" (each with its own constant copies) -> x + mask per layer."""
    f32, b = np.dtype(np.float32), np.dtype(np.bool_)
    init = {"zero_a": np.array(0.0, np.float32), "fill_a": np.array(-np.inf, np.float32),
            "zero_b": np.array(0.0, np.float32), "fill_b": np.array(second_fill, np.float32)}
    nodes = [
        Node("Where", ["cond", "zero_a", "fill_a"], ["mask_a"], {}, "", "where_a"),
        Node("Add", ["x", "mask_a"], ["y_a"], {}, "", "add_a"),
        Node("Where", ["cond", "zero_b", "fill_b"], ["mask_b"], {}, "", "where_b"),
        Node("Add", ["y_a", "mask_b"], ["y"], {}, "", "add_b"),
    ]
    info = {n: Value(n, f32, (2, 5)) for n in ("x", "mask_a", "y_a", "mask_b", "y")}
    info["cond"] = Value("cond", b, (2, 5))
    for n, a in init.items():
        info[n] = Value(n, a.dtype, a.shape)
    outputs = [info["y"]] + ([info["mask_b"]] if output_second else [])
    return Graph([info["x"], info["cond"]], outputs, nodes, init, {"": 17}, info)


def _run(graph: Graph) -> np.ndarray:
    plan = Plan(graph, {})
    plan.inputs["x"][...] = np.arange(10, dtype=np.float32).reshape(2, 5)
    plan.inputs["cond"][...] = np.arange(10).reshape(2, 5) % 3 != 0
    plan.run()
    return plan.outputs["y"].copy()


def test_equal_constants_by_value_make_one_node() -> None:
    merged = cse.run(_graph())
    assert [n.name for n in merged.nodes] == ["where_a", "add_a", "add_b"]
    assert merged.nodes[2].inputs == ["y_a", "mask_a"]
    assert not {"zero_b", "fill_b"} & set(merged.initializers)
    expected = _run(_graph())
    np.testing.assert_array_equal(_run(merged), expected)
    assert np.isneginf(expected).any() and np.isfinite(expected).any()


def test_different_values_and_graph_outputs_stay() -> None:
    assert len(cse.run(_graph(second_fill=-1e9)).nodes) == 4
    assert len(cse.run(_graph(output_second=True)).nodes) == 4


def test_random_ops_are_never_merged() -> None:
    f32 = np.dtype(np.float32)
    nodes = [Node("RandomUniform", [], [o], {"shape": [3], "dtype": 1}, "", o) for o in ("r1", "r2")]
    nodes.append(Node("Add", ["r1", "r2"], ["y"], {}, "", "add"))
    info = {n: Value(n, f32, (3,)) for n in ("r1", "r2", "y")}
    graph = Graph([], [info["y"]], nodes, {}, {"": 17}, info)
    assert len(cse.run(graph).nodes) == 3


def test_graph_with_opaque_attributes_is_left_alone() -> None:
    """Names used inside a fused subgraph attribute would not follow a renaming: no merging at all."""
    graph = _graph()
    graph.nodes[1].attrs["nodes"] = [Node("Identity", ["mask_a"], ["t"])]
    assert len(cse.run(graph).nodes) == 4
