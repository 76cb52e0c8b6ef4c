"""Common-subexpression elimination: a node computing what an earlier node already computed is dropped.

Two nodes are the same computation when they have the same op (and domain), the same attributes and
the same inputs, where a small constant input counts by its value rather than its name: exporters
give every layer its own copy of `0` or `-inf` (BERT's per-layer attention-mask `Where`, twelve
identical nodes over the same mask). Consumers of the dropped node read the kept node's outputs.
Random ops and nodes producing a graph output are left alone. A graph with a node whose attributes
hold anything but plain values (a subgraph, a fused elementwise chain) is left as it is: names used
inside those attributes would not follow the renaming. So the pass runs before the elementwise
chains are fused.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

from sparsejit.graph.ir import Graph, Node
from sparsejit.graph.op_traits import is_nondeterministic
from sparsejit.graph.rewrite import Rewriter

NAME = "cse"
_SMALL = 64  # constants up to this many elements compare by value


class _Unhashable(Exception):
    pass


def _freeze(value: Any) -> Hashable:
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, (str, bytes, int, float, bool, type(None), np.generic)):
        return (type(value).__name__, value)
    raise _Unhashable


def _input_key(graph: Graph, name: str) -> Hashable:
    value = graph.initializers.get(name) if name else None
    if value is not None and value.size <= _SMALL:
        return _freeze(value)
    return name


def _attrs_key(node: Node) -> Hashable | None:
    try:
        return tuple(sorted((k, _freeze(v)) for k, v in node.attrs.items()))
    except _Unhashable:
        return None


def _key(graph: Graph, node: Node) -> Hashable | None:
    if is_nondeterministic(node.op_type, node.domain):
        return None
    attrs = _attrs_key(node)
    inputs = tuple(_input_key(graph, n) for n in node.inputs)
    return (node.domain, node.op_type, inputs, attrs, len(node.outputs))


def run(graph: Graph, ctx: object = None) -> Graph:
    """Drop nodes that repeat an earlier node's computation (module docstring). Modifies and returns `graph`."""
    if any(_attrs_key(node) is None for node in graph.nodes):
        return graph
    outputs = set(graph.output_names)
    kept_for: dict[str, str] = {}  # output of a dropped node -> the same value from the kept node
    first: dict[Hashable, Node] = {}
    rewriter = Rewriter(graph)
    for node in graph.nodes:
        original = node
        if any(n in kept_for for n in node.inputs):
            node = Node(node.op_type, [kept_for.get(n, n) for n in node.inputs], list(node.outputs),
                        dict(node.attrs), node.domain, node.name)
        key = _key(graph, node)
        earlier = first.get(key) if key is not None else None
        if (earlier is not None and not outputs.intersection(node.outputs)
                and all(b or not a for a, b in zip(node.outputs, earlier.outputs, strict=True))):
            kept_for.update((a, b) for a, b in zip(node.outputs, earlier.outputs, strict=True) if a)
            rewriter.replace([original], None)
            continue
        if node is not original:
            rewriter.substitute(original, node)
        if key is not None:
            first.setdefault(key, node)
    return rewriter.finish()
