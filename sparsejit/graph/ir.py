"""sparsejit's own small graph IR: values, nodes, initializers.

The IR is deliberately plain: a list of nodes in topological order over named values. Shapes are
tuples whose entries are ints (static) or strings/None (symbolic/unknown) until a bucket shape is
applied by `sparsejit.graph.specialise`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Dim = int | str | None
Shape = tuple[Dim, ...]


@dataclass
class Value:
    """A named tensor: graph input, output or intermediate."""

    name: str
    dtype: np.dtype
    shape: Shape | None = None

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)


@dataclass
class Node:
    """One operator application. Empty strings in `inputs` mark omitted optional inputs."""

    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""
    name: str = ""

    @property
    def qualified_op(self) -> str:
        return f"{self.domain or 'ai.onnx'}::{self.op_type}"


@dataclass(frozen=True)
class QuantSource:
    """The 8-bit tensor, scale, zero point and axis a constant was dequantised from at folding."""

    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray | None
    axis: int


@dataclass
class Graph:
    """A whole model: inputs, outputs, nodes in topological order and constant tensors."""

    inputs: list[Value]
    outputs: list[Value]
    nodes: list[Node]
    initializers: dict[str, np.ndarray]
    opsets: dict[str, int]
    value_info: dict[str, Value] = field(default_factory=dict)
    int8_sources: dict[str, QuantSource] = field(default_factory=dict)
    """Float initializers folded from a DequantizeLinear of an 8-bit constant, by name: their source."""

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.outputs]

    def opset(self, domain: str = "") -> int:
        return self.opsets.get(domain, self.opsets.get("ai.onnx", 0))

    def consumers(self) -> dict[str, list[Node]]:
        uses: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    uses.setdefault(name, []).append(node)
        return uses

    def producers(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs if out}

    def copy(self) -> Graph:
        """A shallow structural copy: new node list and dicts, shared weight arrays."""
        return Graph(
            inputs=[Value(v.name, v.dtype, v.shape) for v in self.inputs],
            outputs=[Value(v.name, v.dtype, v.shape) for v in self.outputs],
            nodes=[Node(n.op_type, list(n.inputs), list(n.outputs), dict(n.attrs), n.domain, n.name)
                   for n in self.nodes],
            initializers=dict(self.initializers),
            opsets=dict(self.opsets),
            value_info=dict(self.value_info),
            int8_sources=dict(self.int8_sources),
        )

    def dump(self) -> str:
        """Human-readable listing of the graph (for debugging passes)."""
        lines = [f"inputs: {[(v.name, str(v.dtype), v.shape) for v in self.inputs]}"]
        for n in self.nodes:
            shapes = [self.value_info[o].shape if o in self.value_info else "?" for o in n.outputs]
            lines.append(f"  {n.op_type}({', '.join(n.inputs)}) -> {', '.join(n.outputs)} {shapes}"
                         + (f" {n.attrs}" if n.attrs else ""))
        lines.append(f"outputs: {self.output_names}")
        return "\n".join(lines)
