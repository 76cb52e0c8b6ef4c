"""Memory planning: assign every intermediate tensor of a specialised graph to a reusable block.

Values whose live ranges do not overlap share a block, so a plan holds a few large buffers instead
of one per tensor. Pure view ops (Reshape, Squeeze, ...) get no block of their own: they alias
their input, whose lifetime is extended to cover them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsejit.graph.ir import Graph
from sparsejit.graph.op_traits import VIEW as VIEW_OPS

ALIGNMENT = 64


@dataclass
class MemoryPlan:
    """`block_of[value]` indexes `block_sizes`; `alias_of[value]` names the value a view reads."""

    block_of: dict[str, int]
    block_sizes: list[int]
    alias_of: dict[str, str]

    @property
    def total_bytes(self) -> int:
        return sum(self.block_sizes)

    def allocate(self) -> list[np.ndarray]:
        """Allocate the blocks (64-byte aligned byte arrays)."""
        blocks = []
        for size in self.block_sizes:
            raw = np.empty(size + ALIGNMENT, dtype=np.uint8)
            start = (-raw.ctypes.data) % ALIGNMENT
            blocks.append(raw[start:start + size])
        return blocks


def plan_memory(graph: Graph) -> MemoryPlan:
    """Greedy best-fit assignment of node outputs to blocks by live range."""
    consts = graph.initializers
    graph_inputs = set(graph.input_names)
    alias_of: dict[str, str] = {}

    def root(name: str) -> str:
        while name in alias_of:
            name = alias_of[name]
        return name

    for node in graph.nodes:
        if node.domain == "" and node.op_type in VIEW_OPS and node.inputs[0] not in consts:
            alias_of[node.outputs[0]] = node.inputs[0]

    last_use: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for name in node.inputs:
            if name and name not in consts:
                last_use[root(name)] = i
        for name in node.outputs:
            if name:
                last_use.setdefault(root(name), i)
    forever = len(graph.nodes)
    for v in graph.outputs:
        last_use[root(v.name)] = forever

    def nbytes(name: str) -> int:
        v = graph.value_info[name]
        size = int(np.prod(v.shape)) * v.dtype.itemsize if v.shape else v.dtype.itemsize
        return max(ALIGNMENT, (size + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT)

    block_of: dict[str, int] = {}
    sizes: list[int] = []
    free: list[int] = []
    for i, node in enumerate(graph.nodes):
        for name in node.outputs:
            if not name or name in alias_of or name in graph_inputs:
                continue
            need = nbytes(name)
            fitting = [b for b in free if sizes[b] >= need]
            if fitting:
                block = min(fitting, key=lambda b: sizes[b])
                free.remove(block)
            elif free:
                block = max(free, key=lambda b: sizes[b])
                free.remove(block)
                sizes[block] = need
            else:
                block = len(sizes)
                sizes.append(need)
            block_of[name] = block
        for name in {root(n) for n in node.inputs + node.outputs if n and n not in consts}:
            if last_use.get(name) == i and name in block_of:
                free.append(block_of[name])
    return MemoryPlan(block_of, sizes, alias_of)
