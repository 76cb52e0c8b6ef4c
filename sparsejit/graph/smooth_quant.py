"""Fold a per-channel scale in front of static int8 products into their input quantisation.

NNCF's SmoothQuant writes `Mul(x, c)` before the QuantizeLinear of a product's input, with a constant c
of one value per input channel (shape [K] or [1, ..., 1, K]). When only static `sparsejit::QMatMul`
nodes read the product x * c, the quantiser of those nodes computes it (the same float32 products,
then the same division by the scale: `kernels.quantize.quantize_rows(multiplier=)`), so

    QMatMul(Mul(x, c), W, ...)  ->  QMatMul(x, W, ..., x_multiplier=c)   (input 6)

and the Mul, a pass over the activation, goes. Runs after `qkv_merge` (which merges products reading
the same value) and before `elementwise_chains` (which would otherwise fuse the Mul into a chain).
"""

from __future__ import annotations

import numpy as np

from sparsejit.graph.ir import Graph, Node
from sparsejit.graph.rewrite import FUSED_DOMAIN, Rewriter, Uses, add_constant

NAME = "smooth_quant"
MULTIPLIER_INPUT = 6  # QMatMul: [x, w_q, w_scale, w_zero, bias, residual, x_multiplier]


def _channel_scale(graph: Graph, node: Node) -> tuple[str, np.ndarray] | None:
    """(the activation, c as float32 [K]) when `node` is Mul(x, c) with one constant per last-axis channel."""
    if node.op_type != "Mul" or node.domain or len(node.inputs) != 2:
        return None
    for x, c_name in (node.inputs, node.inputs[::-1]):
        c = graph.initializers.get(c_name)
        info = graph.value_info.get(x)
        if c is None or x in graph.initializers or info is None or not info.is_static or not info.shape:
            continue
        k = info.shape[-1]
        if (c.dtype == np.float32 and info.dtype == np.float32 and c.ndim <= len(info.shape) and c.ndim >= 1
                and c.shape[-1] == k and c.size == k):
            return x, c.reshape(-1)
    return None


def _static_products(uses: Uses, name: str) -> list[Node] | None:
    readers = uses.consumers.get(name, [])
    if not readers or name in uses.graph_outputs:
        return None
    for r in readers:
        if (r.op_type != "QMatMul" or r.domain != FUSED_DOMAIN or r.attrs.get("mode") != "static"
                or r.inputs[0] != name or name in r.inputs[1:]
                or (len(r.inputs) > MULTIPLIER_INPUT and r.inputs[MULTIPLIER_INPUT])):
            return None
    return readers


def run(graph: Graph, ctx: object = None) -> Graph:
    """Fold each such Mul into the products reading it (module docstring). Modifies and returns `graph`."""
    if not any(n.op_type == "QMatMul" and n.domain == FUSED_DOMAIN for n in graph.nodes):
        return graph
    uses = Uses(graph)
    rewriter = Rewriter(graph)
    for node in graph.nodes:
        scaled = _channel_scale(graph, node)
        products = _static_products(uses, node.outputs[0]) if scaled is not None else None
        if products is None or rewriter.is_claimed(node) or any(rewriter.is_claimed(p) for p in products):
            continue
        x, c = scaled
        c_name = add_constant(graph, f"{node.name or node.outputs[0]}/x_multiplier", np.ascontiguousarray(c))
        rewriter.replace([node], None)
        for p in products:
            inputs = list(p.inputs) + [""] * (MULTIPLIER_INPUT - len(p.inputs))
            rewriter.substitute(p, Node(p.op_type, [x, *inputs[1:MULTIPLIER_INPUT], c_name], list(p.outputs),
                                        dict(p.attrs), p.domain, p.name))
    return rewriter.finish()
