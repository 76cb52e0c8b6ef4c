"""The epilogue pattern after a matrix product: bias Add, activation, residual Add.

Shared by the fp32 (`matmul_epilogue`) and int8 (`quant_fusion`) product fusions. The activation is
recognised by what it computes, not how it is spelled: the elementwise subgraph after the bias is
evaluated on sample points and compared with GELU (erf and tanh forms) and ReLU, so every exporter's
way of writing GELU matches. Nodes a `Rewriter` has already claimed are never matched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sparsejit.graph.fake_quant import fake_quant_producing
from sparsejit.graph.ir import Graph, Node, Value
from sparsejit.graph.op_traits import is_elementwise
from sparsejit.graph.reference import evaluate
from sparsejit.graph.rewrite import Rewriter, Uses, scalar_constant

_SAMPLES = np.concatenate([np.linspace(-8.0, 8.0, 321), [-30.0, -1e-3, 0.0, 1e-3, 30.0]]).astype(np.float32)
_ACTIVATIONS = {
    "gelu_erf": lambda x: 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0))),
    "gelu_tanh": lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3))),
    "relu": lambda x: np.maximum(x, 0.0),
}
_WINDOW = 16  # an activation's nodes follow its product within this many nodes (exporters keep them together)


@dataclass
class Epilogue:
    """What follows a matrix product and can run in its epilogue: bias, activation, residual."""

    nodes: list[Node] = field(default_factory=list)
    output: str = ""
    bias: str = ""
    activation: str | None = None
    residual: str = ""


def bias_constant(graph: Graph, product: Node, other: str, n_cols: int) -> str:
    """If `other` is a float32 constant of `n_cols` values (a bias), the name of a new writable [N] copy
    of it for `product`'s epilogue; else ""."""
    value = graph.initializers.get(other)
    if value is None or value.size != n_cols or value.shape[-1:] != (n_cols,) or value.dtype != np.float32:
        return ""
    name = f"{product.name}/bias"
    graph.initializers[name] = np.array(value.reshape(n_cols), dtype=np.float32)  # writable copy
    graph.value_info[name] = Value(name, np.dtype(np.float32), (n_cols,))
    return name


def is_residual(graph: Graph, other: str, output: str) -> bool:
    """Whether `other`, added to the product's `output`, is a residual: a computed float32 tensor of
    the same shape."""
    info = graph.value_info.get(other)
    return (other not in graph.initializers and info is not None and info.dtype == np.float32
            and tuple(info.shape) == tuple(graph.value_info[output].shape))


def match_epilogue(graph: Graph, uses: Uses, rewriter: Rewriter, product: Node, n_cols: int) -> Epilogue:
    """Bias Add (constant [N], stored as a new writable [N] initializer), then an activation recognised
    numerically, then a residual Add of a same-shaped float32 tensor — each optional, in that order,
    none of them a node `rewriter` has claimed."""
    found = Epilogue([], product.outputs[0])

    def next_free(name: str) -> Node | None:
        node = uses.sole_consumer(name)
        return None if node is None or rewriter.is_claimed(node) or node.domain else node

    nxt = next_free(found.output)
    if nxt is not None and nxt.op_type == "Add":
        other = nxt.inputs[1] if nxt.inputs[0] == found.output else nxt.inputs[0]
        bias = bias_constant(graph, product, other, n_cols)
        if bias:
            found.bias = bias
            found.nodes.append(nxt)
            found.output = nxt.outputs[0]
    last = found.nodes[-1] if found.nodes else product
    act = _match_activation(graph, uses, rewriter, rewriter.position(last), found.output)
    if act is not None:
        found.activation, act_nodes = act
        found.nodes.extend(act_nodes)
        found.output = act_nodes[-1].outputs[0]
    nxt = next_free(found.output)
    if nxt is not None and nxt.op_type == "Add" and nxt.inputs[0] != nxt.inputs[1]:
        other = nxt.inputs[1] if nxt.inputs[0] == found.output else nxt.inputs[0]
        if is_residual(graph, other, found.output):
            found.residual = other
            found.nodes.append(nxt)
            found.output = nxt.outputs[0]
    return found


def match_rounded_gelu(graph: Graph, uses: Uses, rewriter: Rewriter, start: int,
                       y: str) -> tuple[list[Node], list[float] | None, list[float] | None] | None:
    """GELU (erf form) of `y` right after `start` whose erf(.) and / or 1 + erf(.) are rounded by Q -> DQ
    pairs, as quantize_static writes it: (its nodes, the erf rounding's [scale, lowest, highest], the
    sum's). Recognised by what the chain computes with the pairs taken out, and by what each pair rounds:
    the output of an Erf, or the sum of 1 and an (optionally rounded) Erf; any other rounding: None."""
    found = _match_activation(graph, uses, rewriter, start, y, rounded=True)
    if found is None or found[0] != "gelu_erf":
        return None
    members = found[1]
    points: dict[str, list[float]] = {}
    for node in members:
        if node.op_type != "DequantizeLinear":
            continue
        pair = fake_quant_producing(graph, uses, node.outputs[0])
        source = uses.producers.get(pair.source) if pair is not None else None
        if pair is None or pair.quantize not in members or source is None:
            return None
        if source.op_type == "Erf" and "erf" not in points:
            points["erf"] = pair.bounds
        elif source.op_type == "Add" and "sum" not in points and _adds_one_to_erf(graph, uses, source):
            points["sum"] = pair.bounds
        else:
            return None
    quantizers = sum(n.op_type == "QuantizeLinear" for n in members)
    if not points or quantizers != len(points):
        return None
    return members, points.get("erf"), points.get("sum")


def _adds_one_to_erf(graph: Graph, uses: Uses, add: Node) -> bool:
    one = [n for n in add.inputs if (c := scalar_constant(graph, n)) is not None and float(c) == 1.0]
    other = [n for n in add.inputs if n not in one]
    if len(one) != 1 or len(other) != 1:
        return False
    source = uses.producers.get(other[0])
    if source is not None and source.op_type == "DequantizeLinear":
        pair = fake_quant_producing(graph, uses, other[0])
        source = uses.producers.get(pair.source) if pair is not None else None
    return source is not None and source.op_type == "Erf"


_QDQ = ("QuantizeLinear", "DequantizeLinear")


def _match_activation(graph: Graph, uses: Uses, rewriter: Rewriter, start: int,
                      y: str, rounded: bool = False) -> tuple[str, list[Node]] | None:
    """The largest closed elementwise subgraph f(y) right after `start` that computes a known activation;
    `rounded`: Q -> DQ nodes may be members too, evaluated as if they were not there."""
    produced = {y}
    members: list[Node] = []
    best: tuple[str, list[Node]] | None = None
    for node in graph.nodes[start + 1: start + _WINDOW]:
        eligible = is_elementwise(node.op_type, node.domain) or (rounded and not node.domain and node.op_type in _QDQ)
        if not eligible or rewriter.is_claimed(node):
            continue
        inputs = [n for n in node.inputs if n]
        if not any(n in produced for n in inputs):
            continue
        if not all(n in produced or scalar_constant(graph, n) is not None for n in inputs):
            break
        members.append(node)
        produced.update(o for o in node.outputs if o)
        escaping = [v for v in produced
                    if v in uses.graph_outputs or any(c not in members for c in uses.consumers.get(v, []))]
        if escaping == [node.outputs[0]]:
            name = _identify(graph, members, y, rounded)
            if name is not None:
                best = (name, list(members))
    return best


def _identify(graph: Graph, members: list[Node], y: str, skip_rounding: bool = False) -> str | None:
    values: dict[str, np.ndarray] = {y: _SAMPLES}
    with np.errstate(all="ignore"):
        for node in members:
            if skip_rounding and node.op_type in _QDQ:
                values[node.outputs[0]] = values[node.inputs[0]]
                continue
            args = [values[n] if n in values else graph.initializers.get(n) if n else None for n in node.inputs]
            if any(n and a is None for n, a in zip(node.inputs, args, strict=True)):
                return None
            outs = evaluate(node, graph.opset(node.domain), args)
            values.update(zip(node.outputs, outs, strict=False))
        got = values[members[-1].outputs[0]]
    if got.shape != _SAMPLES.shape or not np.issubdtype(got.dtype, np.floating):
        return None
    got = got.astype(np.float64)
    x = _SAMPLES.astype(np.float64)
    for name, fn in _ACTIVATIONS.items():
        ref = fn(x)
        if np.all(np.abs(got - ref) <= 1e-5 * (1.0 + np.abs(ref))):
            return name
    return None
