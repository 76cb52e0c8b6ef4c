"""Fake quantisation in QDQ graphs: a `QuantizeLinear` -> `DequantizeLinear` pair on one per-tensor grid,
which rounds a float tensor to that grid and keeps it float. Shared by the passes that see through
such pairs (`redundant_requantize`, `attention`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsejit.graph.ir import Graph, Node
from sparsejit.graph.rewrite import Uses, scalar_constant

Grid = tuple[float, int, str]  # scale, zero point, integer dtype


def quant_grid(graph: Graph, node: Node) -> Grid | None:
    """The per-tensor (scale, zero point, dtype) of a QuantizeLinear / DequantizeLinear node, if constant."""
    if node.domain or node.attrs.get("block_size"):
        return None
    scale = scalar_constant(graph, node.inputs[1]) if len(node.inputs) > 1 else None
    if scale is None or scale.dtype != np.float32 or not float(scale) > 0:
        return None
    zero_name = node.inputs[2] if len(node.inputs) > 2 else ""
    zero = scalar_constant(graph, zero_name) if zero_name else np.zeros((), np.uint8)
    if zero is None or zero.dtype not in (np.uint8, np.int8):
        return None
    if node.op_type == "QuantizeLinear" and node.attrs.get("output_dtype"):
        return None  # an explicit output type without a zero point: left alone
    return float(scale), int(zero), zero.dtype.str


@dataclass(frozen=True)
class FakeQuant:
    """`output = DequantizeLinear(QuantizeLinear(source))` on one grid."""

    source: str
    output: str
    quantize: Node
    dequantize: Node
    grid: Grid

    @property
    def bounds(self) -> list[float]:
        """[scale, lowest, highest] with the bounds in units of the scale, relative to the zero point:
        x rounds to rint(clamp(x / scale, lowest, highest)) * scale."""
        scale, zero, dtype = self.grid
        lo, hi = (-128, 127) if np.dtype(dtype) == np.int8 else (0, 255)
        return [scale, float(lo - zero), float(hi - zero)]


def fake_quant_producing(graph: Graph, uses: Uses, name: str) -> FakeQuant | None:
    """The pair whose DequantizeLinear produces `name` (its QuantizeLinear read by nothing else)."""
    dq = uses.producers.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.domain:
        return None
    q = uses.producers.get(dq.inputs[0])
    if q is None or q.op_type != "QuantizeLinear" or q.domain or uses.sole_consumer(q.outputs[0]) is not dq:
        return None
    grid = quant_grid(graph, dq)
    if grid is None or quant_grid(graph, q) != grid:
        return None
    return FakeQuant(q.inputs[0], dq.outputs[0], q, dq, grid)


def fake_quant_reading(graph: Graph, uses: Uses, name: str) -> FakeQuant | None:
    """The pair that is the only reader of `name`."""
    q = uses.sole_consumer(name)
    if q is None or q.op_type != "QuantizeLinear" or q.domain or q.inputs[0] != name:
        return None
    dq = uses.sole_consumer(q.outputs[0])
    return fake_quant_producing(graph, uses, dq.outputs[0]) if dq is not None else None
