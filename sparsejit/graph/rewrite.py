"""The rewrite infrastructure every graph pass is built on.

- `Uses`: use/def maps of a graph (consumers, producers, graph outputs).
- `Rewriter`: collects node replacements for one pass. A node can be *claimed* once: a pattern that
  asks for a node another pattern already took is refused, so two fusions can never consume the same
  node (and leave a consumer reading a value that nothing produces any more).
- `remove_dead_nodes`, `prune_initializers`: dead-code elimination.
- `add_constant`, `scalar_constant`, `derived_constant`: constant helpers.
- `check_well_formed`: every input defined before it is read, every output produced once.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable

import numpy as np

from sparsejit.graph.ir import Graph, Node, Value

FUSED_DOMAIN = "sparsejit"


class GraphRewriteError(RuntimeError):
    """A pass produced an ill-formed graph: a bug in the pass, named in the message."""


class Uses:
    """Consumers and producers of every value of `graph`, computed once."""

    def __init__(self, graph: Graph) -> None:
        self.consumers = graph.consumers()
        self.producers = graph.producers()
        self.graph_outputs = set(graph.output_names)

    def sole_consumer(self, name: str) -> Node | None:
        """The only node reading `name`, if `name` has exactly one reader and is not a graph output."""
        users = self.consumers.get(name, [])
        if len(users) == 1 and name not in self.graph_outputs:
            return users[0]
        return None


class Rewriter:
    """Node replacements for one pass over `graph`, each node claimed at most once.

    `replace(members, by)` removes `members` and puts `by` (a node, or None for a pure removal) where
    the last member in graph order stood: every input of a fused node is read by some member, so it is
    defined before that position.
    """

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self._index = {id(n): i for i, n in enumerate(graph.nodes)}
        self._replacement: dict[int, Node | None] = {}

    def position(self, node: Node) -> int:
        return self._index[id(node)]

    def is_claimed(self, node: Node) -> bool:
        return id(node) in self._replacement

    def replace(self, members: Iterable[Node], by: Node | None, at: Node | None = None) -> bool:
        """Claim `members` and replace them by `by`, placed at `at` (default: the last member).
        Returns False, changing nothing, when any member is already claimed (or listed twice)."""
        members = list(members)
        ids = {id(m) for m in members}
        if len(ids) != len(members) or any(i in self._replacement for i in ids):
            return False
        place = at if at is not None else max(members, key=self.position)
        if id(place) not in ids:
            raise ValueError("the replacement must stand at one of the replaced nodes")
        for member in members:
            self._replacement[id(member)] = by if member is place else None
        return True

    def substitute(self, node: Node, by: Node) -> bool:
        """Replace one node by another in place (a claim like any other)."""
        return self.replace([node], by)

    @property
    def changed(self) -> bool:
        return bool(self._replacement)

    def finish(self) -> Graph:
        """Apply the replacements, drop initializers nothing reads any more; returns the graph."""
        if not self._replacement:
            return self.graph
        nodes = []
        for node in self.graph.nodes:
            if id(node) not in self._replacement:
                nodes.append(node)
            elif self._replacement[id(node)] is not None:
                nodes.append(self._replacement[id(node)])
        self.graph.nodes = nodes
        return prune_initializers(self.graph)


def prune_initializers(graph: Graph) -> Graph:
    """Drop initializers that no node reads and that are no graph output."""
    used = {name for n in graph.nodes for name in n.inputs if name} | set(graph.output_names)
    graph.initializers = {k: v for k, v in graph.initializers.items() if k in used}
    return graph


def remove_dead_nodes(graph: Graph) -> Graph:
    """Drop nodes none of whose outputs reaches a graph output, then unused initializers."""
    needed = set(graph.output_names)
    kept: list[Node] = []
    for node in reversed(graph.nodes):
        if any(o and o in needed for o in node.outputs):
            kept.append(node)
            needed.update(n for n in node.inputs if n)
    graph.nodes = kept[::-1]
    return prune_initializers(graph)


def add_constant(graph: Graph, name: str, value: np.ndarray) -> str:
    """Add (or overwrite) initializer `name` with its value info; returns `name`."""
    graph.initializers[name] = value
    graph.value_info[name] = Value(name, value.dtype, tuple(value.shape))
    return name


def scalar_constant(graph: Graph, name: str) -> np.ndarray | None:
    """The initializer `name` as a 0-d array if it holds exactly one element (of any shape: exporters
    write per-tensor scales as [] or [1]), else None."""
    value = graph.initializers.get(name) if name else None
    return value.reshape(()) if value is not None and value.size == 1 else None


_derived: dict[tuple[int, str], tuple[weakref.ref, np.ndarray]] = {}
_derived_lock = threading.Lock()


def derived_constant(source: np.ndarray, tag: str, build: Callable[[], np.ndarray]) -> np.ndarray:
    """`build()` computed once per live `source` array and `tag`: a constant derived from a weight
    (shared by every bucket, which each run the passes on their own graph) is made once per model."""
    key = (id(source), tag)
    with _derived_lock:
        entry = _derived.get(key)
        if entry is not None and entry[0]() is source:
            return entry[1]
    value = build()

    def forget(ref: weakref.ref, key: tuple[int, str] = key) -> None:
        with _derived_lock:
            if key in _derived and _derived[key][0] is ref:
                del _derived[key]

    with _derived_lock:
        _derived[key] = (weakref.ref(source, forget), value)
    return value


def check_well_formed(graph: Graph, after: str = "") -> None:
    """Raise `GraphRewriteError` unless every node input is a graph input, an initializer or an
    earlier node's output, every value is produced once, and every graph output is defined."""
    defined = set(graph.input_names) | set(graph.initializers)
    where = f" after pass {after!r}" if after else ""
    for node in graph.nodes:
        for name in node.inputs:
            if name and name not in defined:
                raise GraphRewriteError(f"{node.qualified_op} node {node.name!r} reads {name!r}, which is "
                                        f"not defined before it{where}")
        for name in node.outputs:
            if name and name in defined:
                raise GraphRewriteError(f"{name!r} is produced twice (again by {node.name!r}){where}")
            if name:
                defined.add(name)
    missing = [name for name in graph.output_names if name not in defined]
    if missing:
        raise GraphRewriteError(f"graph outputs {missing} are not produced{where}")
