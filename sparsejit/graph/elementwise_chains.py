"""Pass: chains of elementwise nodes, each feeding only the next, become one
`sparsejit::FusedElementwise` node (attrs: `nodes`, the members in order), computed in one pass by one
generated kernel.

Per-tensor QuantizeLinear / DequantizeLinear (one constant scale and zero point, 8-bit) join chains too:
each is then a scalar function of its input, and a Q -> DQ pair (a fake-quantised activation) runs
inside one kernel with no 8-bit tensor in between.
"""

from __future__ import annotations

import numpy as np

from sparsejit.graph.ir import Graph, Node
from sparsejit.graph.op_traits import is_elementwise
from sparsejit.graph.rewrite import FUSED_DOMAIN, Rewriter, Uses, scalar_constant

NAME = "elementwise_chains"

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_QDQ_TYPES = (np.dtype(np.int8), np.dtype(np.uint8))


def joins_chains(graph: Graph, node: Node) -> bool:
    """An ai.onnx elementwise op with one output, or a per-tensor 8-bit Q / DQ (module docstring)."""
    if node.domain or len(node.outputs) != 1:
        return False
    if is_elementwise(node.op_type):
        return True
    if node.op_type not in _QDQ_OPS or node.attrs.get("block_size", 0):
        return False
    eight_bit = node.outputs[0] if node.op_type == "QuantizeLinear" else node.inputs[0]
    zero = node.inputs[2] if len(node.inputs) > 2 else ""
    return (graph.value_info[eight_bit].dtype in _QDQ_TYPES and scalar_constant(graph, node.inputs[1]) is not None
            and (not zero or scalar_constant(graph, zero) is not None))


def run(graph: Graph, ctx: object = None) -> Graph:
    """Merge chains of elementwise nodes (each output feeding only the next) into one node."""
    uses = Uses(graph)
    tail_group: dict[str, list[Node]] = {}  # output name of a group's last node -> the group
    groups: list[list[Node]] = []
    for node in graph.nodes:
        if not joins_chains(graph, node):
            continue
        out_shape = tuple(graph.value_info[node.outputs[0]].shape)
        joined = None
        for name in node.inputs:
            group = tail_group.get(name)
            if group is not None and uses.sole_consumer(name) is node and _broadcasts_to(
                    tuple(graph.value_info[name].shape), out_shape):
                joined = group
                del tail_group[name]
                break
        if joined is None:
            joined = []
            groups.append(joined)
        joined.append(node)
        tail_group[node.outputs[0]] = joined
    rewriter = Rewriter(graph)
    for group in groups:
        if len(group) < 2:
            continue
        inner = {o for n in group for o in n.outputs}
        external: list[str] = []
        for n in group:
            for name in n.inputs:
                if name and name not in inner and name not in external:
                    external.append(name)
        last = group[-1]
        fused = Node("FusedElementwise", external, [last.outputs[0]], {"nodes": list(group)}, FUSED_DOMAIN,
                     last.name + "/fused")
        rewriter.replace(group, fused, at=last)
    return rewriter.finish()


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(shape[::-1], target[::-1], strict=False))
