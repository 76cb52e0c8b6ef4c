"""Pass: a float32 MatMul with a constant 2-D weight, followed by a bias Add, an activation and a
residual Add (each optional, see `epilogue`), becomes one `sparsejit::FusedMatMul`: the GEMM applies
them to its tile while it is in L1."""

from __future__ import annotations

import numpy as np

from sparsejit.graph.epilogue import match_epilogue
from sparsejit.graph.ir import Graph, Node
from sparsejit.graph.rewrite import FUSED_DOMAIN, Rewriter, Uses

NAME = "matmul_epilogue"


def run(graph: Graph, ctx: object = None) -> Graph:
    """Replace MatMul(+bias)(+activation)(+residual) chains by `sparsejit::FusedMatMul` nodes."""
    uses = Uses(graph)
    rewriter = Rewriter(graph)
    for node in list(graph.nodes):
        if node.op_type != "MatMul" or node.domain or rewriter.is_claimed(node):
            continue
        weight = graph.initializers.get(node.inputs[1])
        a_info = graph.value_info.get(node.inputs[0])
        if (weight is None or weight.ndim != 2 or weight.dtype != np.float32 or a_info is None
                or a_info.dtype != np.float32 or len(a_info.shape) < 2):
            continue
        epilogue = match_epilogue(graph, uses, rewriter, node, weight.shape[1])
        if not epilogue.nodes:
            continue
        fused = Node("FusedMatMul", [node.inputs[0], node.inputs[1], epilogue.bias, epilogue.residual],
                     [epilogue.output], {"activation": epilogue.activation}, FUSED_DOMAIN, node.name + "/fused")
        rewriter.replace([node, *epilogue.nodes], fused)
    return rewriter.finish()
