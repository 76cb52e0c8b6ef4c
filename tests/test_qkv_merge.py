"""Merging an attention's Q, K, V int8 products into one (`sparsejit.graph.qkv_merge`)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsejit.graph import qkv_merge
from sparsejit.graph.ir import Graph, Node, Value
from sparsejit.graph.pass_context import PassContext
from sparsejit.plan.plan import Plan

B, S, K, HEADS, D = 2, 24, 40, 2, 16
W = HEADS * D


def _ctx(max_rows: int | None) -> PassContext:
    return PassContext(attention_head_multiple=16, qkv_merge_max_rows=max_rows)


def _graph(mode: str, shared_q: bool = False) -> Graph:
    """x -> three QMatMul (different weight dtypes' zero points, per-column or scalar scales, bias or
    not) -> Attention with an additive mask term; optionally Q also feeds the graph output."""
    rng = np.random.default_rng(7)
    f32 = np.dtype(np.float32)
    init: dict[str, np.ndarray] = {
        "wq": rng.integers(0, 256, (K, W), dtype=np.uint8), "sq": rng.uniform(0.01, 0.02, W).astype(np.float32),
        "zq": rng.integers(100, 156, W, dtype=np.uint8), "bq": rng.standard_normal(W).astype(np.float32),
        "wk": rng.integers(0, 256, (K, W), dtype=np.uint8), "sk": np.array(0.015, np.float32),
        "zk": np.array(128, np.uint8),
        "wv": rng.integers(0, 256, (K, W), dtype=np.uint8), "sv": rng.uniform(0.01, 0.02, W).astype(np.float32),
        "zv": np.array(131, np.uint8), "bv": rng.standard_normal(W).astype(np.float32),
    }
    attrs = {"mode": mode, "a_scale": 0.05, "a_zero": 120, "activation": None}
    nodes = [
        Node("QMatMul", ["x", "wq", "sq", "zq", "bq", ""], ["q"], dict(attrs), "sparsejit", "q"),
        Node("QMatMul", ["x", "wk", "sk", "zk", "", ""], ["k"], dict(attrs), "sparsejit", "k"),
        Node("QMatMul", ["x", "wv", "sv", "zv", "bv", ""], ["v"], dict(attrs), "sparsejit", "v"),
        Node("Attention", ["q", "k", "v", "mask"], ["y"],
             {"num_heads": HEADS, "head_size": D, "scale": 0.25, "term_signs": [1.0], "nan_to_zero": True},
             "sparsejit", "attention"),
    ]
    values = {"x": (B, S, K), "mask": (B, 1, 1, S), "q": (B, S, W), "k": (B, S, W), "v": (B, S, W), "y": (B, S, W)}
    info = {n: Value(n, f32, s) for n, s in values.items()}
    for n, a in init.items():
        info[n] = Value(n, a.dtype, a.shape)
    outputs = [info["y"]] + ([info["q"]] if shared_q else [])
    return Graph([info["x"], info["mask"]], outputs, nodes, init, {"": 17}, info)


def _run(graph: Graph, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    plan = Plan(graph, {})
    plan.inputs["x"][...] = x
    plan.inputs["mask"][...] = mask
    plan.run()
    return plan.outputs["y"].copy()


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_merged_product_is_bit_identical(mode: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, S, K)).astype(np.float32)
    mask = np.zeros((B, 1, 1, S), np.float32)
    mask[1, ..., -5:] = -np.inf
    merged = qkv_merge.run(_graph(mode), _ctx(1024))
    ops = [n.op_type for n in merged.nodes]
    assert ops == ["QMatMul", "Attention"], ops
    attention = merged.nodes[1]
    assert attention.attrs["packed_qkv"] and attention.inputs[:3] == [merged.nodes[0].outputs[0], "", ""]
    assert not {"wq", "wk", "wv"} & set(merged.initializers)  # the parts' weights left the graph
    expected = _run(_graph(mode), x, mask)
    np.testing.assert_array_equal(_run(merged, x, mask), expected)
    assert np.isfinite(expected).all() and np.abs(expected).max() > 0


def test_not_merged_when_a_part_has_another_consumer_or_too_many_rows() -> None:
    def products(graph):  # type: ignore[no-untyped-def]
        return [n.op_type for n in graph.nodes].count("QMatMul")

    assert products(qkv_merge.run(_graph("dynamic", shared_q=True), _ctx(1024))) == 3
    assert products(qkv_merge.run(_graph("dynamic"), _ctx(B * S - 1))) == 3
    assert products(qkv_merge.run(_graph("dynamic"), _ctx(B * S))) == 1
    assert products(qkv_merge.run(_graph("dynamic"), _ctx(None))) == 1
