"""Lowering registry: how each IR node becomes a call of a kernel on preallocated buffers.

A lowering is `fn(node, ctx) -> Step | None`; the returned zero-argument callable runs the kernel
with every array already bound, so executing a plan is a loop over closures. Lowerings live in the
`ops_*` modules of this package, one small function per operator (family).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sparsejit.errors import UnsupportedOperatorError
from sparsejit.graph.ir import Graph, Node

Step = Callable[[], None]
Lowering = Callable[[Node, "LowerContext"], Step | None]

LOWERINGS: dict[tuple[str, str], Lowering] = {}


def lowers(*op_types: str, domain: str = "") -> Callable[[Lowering], Lowering]:
    """Decorator registering a lowering for one or more op types of `domain`."""

    def register(fn: Lowering) -> Lowering:
        for op in op_types:
            LOWERINGS[(domain, op)] = fn
        return fn

    return register


@dataclass
class LowerContext:
    """What a lowering may look at: the specialised graph, its buffers and shared weight caches."""

    graph: Graph
    arrays: dict[str, np.ndarray]
    weight_cache: dict = field(default_factory=dict)
    precision: str = "fp32"  # "bf16": constant matrix-product weights rounded to bf16

    def array(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def operand(self, name: str) -> np.ndarray:
        """The array behind input `name`: its constant value or its run-time buffer."""
        const = self.graph.initializers.get(name)
        return const if const is not None else self.arrays[name]

    def const(self, name: str) -> np.ndarray | None:
        """The constant value of input `name`, or None when it is computed at run time."""
        return self.graph.initializers.get(name) if name else None

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.graph.value_info[name].shape)

    def dtype(self, name: str) -> np.dtype:
        return self.graph.value_info[name].dtype

    def opset(self, node: Node) -> int:
        return self.graph.opset(node.domain)

    def shared(self, key, build: Callable[[], object]):
        """Memoise a derived weight (e.g. a packed matrix) so every bucket shares one copy."""
        if key not in self.weight_cache:
            self.weight_cache[key] = build()
        return self.weight_cache[key]


SUPPORTED_DTYPES = frozenset(np.dtype(t) for t in (
    np.float32, np.float64, np.int64, np.int32, np.int16, np.int8, np.uint8, np.uint16, np.uint32,
    np.uint64, np.bool_))


def check_supported(graph: Graph) -> None:
    """Raise `UnsupportedOperatorError` for the first node no kernel exists for (op or dtype)."""
    for node in graph.nodes:
        if (node.domain, node.op_type) not in LOWERINGS:
            raise UnsupportedOperatorError(node.op_type, node.domain, node.name,
                                           "sparsejit has no kernel for it")
        for name in node.inputs + node.outputs:
            value = graph.value_info.get(name) if name else None
            if value is not None and value.dtype not in SUPPORTED_DTYPES:
                raise UnsupportedOperatorError(node.op_type, node.domain, node.name,
                                               f"tensor {name!r} has element type {value.dtype}, "
                                               "which sparsejit kernels do not handle")


def lower(node: Node, ctx: LowerContext) -> Step | None:
    fn = LOWERINGS.get((node.domain, node.op_type))
    if fn is None:
        raise UnsupportedOperatorError(node.op_type, node.domain, node.name, "sparsejit has no kernel for it")
    return fn(node, ctx)
