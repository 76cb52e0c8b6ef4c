"""Drop fake-quantisation (`QuantizeLinear` -> `DequantizeLinear`) of values already on that grid.

onnxruntime's `quantize_static` with its default op types puts a Q -> DQ pair after nearly every node,
including the layout ops (`Reshape`, `Transpose`, ...), whose output it quantises with the parameters
of their input. A dequantized value v = (q - z) * s is on the grid of (s, z): quantising it again gives
back q exactly (|q - z| <= 255, so v / s is within a few ulp of an integer), and so does any value a
layout op moves without changing it. So `DQ(Q(x, s, z), s, z)` where x is such a value is x itself:
its consumers read x, and the pair is dropped. Only per-tensor (scalar) parameters, equal in value and
integer type, qualify; a pair whose output is a graph output is kept.

Runs after `quant_fusion` (which turns `MatMul(DQ(Q(x)), W)` into an int8 product and must still see
those pairs; a product whose epilogue ends in a rounding says so in its `output_grid` attribute) and
before the attention and elementwise fusions, which then see fewer nodes.
"""

from __future__ import annotations

from sparsejit.graph.fake_quant import Grid, fake_quant_producing, quant_grid
from sparsejit.graph.ir import Graph, Node
from sparsejit.graph.op_traits import is_view
from sparsejit.graph.rewrite import Rewriter, Uses, remove_dead_nodes

NAME = "redundant_requantize"

_VALUE_PRESERVING = frozenset({"Transpose"})  # beside the view ops: moves elements, never changes one


def run(graph: Graph, ctx: object = None) -> Graph:
    """Drop the redundant Q -> DQ pairs (module docstring). Modifies and returns `graph`."""
    uses = Uses(graph)
    on_grid: dict[str, Grid] = {}  # value -> the grid its elements lie on
    renamed: dict[str, str] = {}  # output of a dropped DQ -> the value it equals

    def resolve(name: str) -> str:
        while name in renamed:
            name = renamed[name]
        return name

    rewriter = Rewriter(graph)
    for node in graph.nodes:
        if rewriter.is_claimed(node):
            continue
        if any(n in renamed for n in node.inputs):
            current = Node(node.op_type, [resolve(n) for n in node.inputs], list(node.outputs), dict(node.attrs),
                           node.domain, node.name)
            rewriter.substitute(node, current)
        else:
            current = node
        if node.op_type == "DequantizeLinear" and not node.domain:
            grid = quant_grid(graph, node)
            pair = fake_quant_producing(graph, uses, node.outputs[0])
            source = resolve(pair.source) if pair is not None else ""
            if (pair is not None and on_grid.get(source) == pair.grid and node.outputs[0] not in uses.graph_outputs
                    and current is node and rewriter.replace([pair.quantize, node], None)):
                renamed[node.outputs[0]] = source
                continue
            if grid is not None:
                on_grid[node.outputs[0]] = grid
        elif node.attrs.get("output_grid"):  # an int8 product whose epilogue ends in a rounding
            scale, zero, dtype = node.attrs["output_grid"]
            on_grid[node.outputs[0]] = (float(scale), int(zero), str(dtype))
        elif (is_view(node.op_type, node.domain) or (node.op_type in _VALUE_PRESERVING and not node.domain)) \
                and current.inputs and current.inputs[0] in on_grid:
            on_grid[node.outputs[0]] = on_grid[current.inputs[0]]
    if not rewriter.changed:
        return graph
    return remove_dead_nodes(rewriter.finish())
