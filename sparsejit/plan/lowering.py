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


class ScratchPool:
    """Working memory that a step needs only while it runs, shared by all the steps of one plan.

    A plan runs its steps one after another, so every step may use the same bytes: requests made
    while lowering one node get disjoint regions, and `begin_step` lets the next node reuse them. A
    request that does not fit gets a new buffer (at least twice the last), so the steps lowered
    earlier keep theirs and the total stays within twice the largest step's need.
    """

    _ALIGN = 64

    def __init__(self) -> None:
        self._buffer = np.empty(0, np.uint8)
        self._offset = 0

    def begin_step(self) -> None:
        self._offset = 0

    def _aligned(self, offset: int) -> int:
        return offset + (-(self._buffer.ctypes.data + offset) % self._ALIGN)

    def take(self, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """An uninitialised array valid during the current step's run only (contents not kept)."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        start = self._aligned(self._offset)
        if start + nbytes > self._buffer.size:
            self._buffer = np.empty(max(nbytes + self._ALIGN, 2 * self._buffer.size), np.uint8)
            start = self._aligned(0)
        self._offset = start + nbytes
        return self._buffer[start:start + nbytes].view(dtype).reshape(shape)


@dataclass
class LowerContext:
    """What a lowering may look at: the specialised graph, its buffers and shared weight caches."""

    graph: Graph
    arrays: dict[str, np.ndarray]
    weight_cache: dict = field(default_factory=dict)
    precision: str = "fp32"  # "bf16": constant matrix-product weights rounded to bf16
    scratch_pool: ScratchPool = field(default_factory=ScratchPool)

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

    def scratch(self, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """Working memory for the step being lowered: valid only while that step runs."""
        return self.scratch_pool.take(tuple(shape), dtype)

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
