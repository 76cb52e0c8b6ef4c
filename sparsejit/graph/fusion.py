"""Fusion passes over a specialised graph (static shapes, constants folded).

- `fuse_matmul_epilogues`: MatMul with a constant 2-D weight, followed by a bias Add, an activation
  and a residual Add, becomes one `sparsejit::FusedMatMul` (the GEMM applies them on its tile while
  it is in L1). The activation is recognised by what it computes, not how it is spelled: the
  elementwise subgraph after the bias is evaluated on sample points and compared with GELU (erf and
  tanh forms) and ReLU, so every exporter's way of writing GELU matches.
- `fuse_elementwise_chains`: chains of elementwise nodes, each feeding only the next, become one
  `sparsejit::FusedElementwise` node, computed in one pass by a generated kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sparsejit.graph.ir import Graph, Node, Value
from sparsejit.graph.reference import evaluate

FUSED_DOMAIN = "sparsejit"

ELEMENTWISE_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
    "And", "Or", "Xor", "Mod", "Max", "Min", "Sum", "Mean", "Where", "Erf", "Tanh", "Sqrt", "Exp",
    "Log", "Sin", "Cos", "Abs", "Floor", "Ceil", "Sign", "Round", "Neg", "Reciprocal", "Not", "IsNaN",
    "IsInf", "Relu", "Sigmoid", "Softplus", "LeakyRelu", "Elu", "HardSigmoid", "PRelu", "Gelu", "Cast",
    "Clip", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot",
})

_SAMPLES = np.concatenate([np.linspace(-8.0, 8.0, 321), [-30.0, -1e-3, 0.0, 1e-3, 30.0]]).astype(np.float32)
_ACTIVATIONS = {
    "gelu_erf": lambda x: 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0))),
    "gelu_tanh": lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3))),
    "relu": lambda x: np.maximum(x, 0.0),
}


class _Uses:
    def __init__(self, graph: Graph) -> None:
        self.consumers = graph.consumers()
        self.graph_outputs = set(graph.output_names)

    def sole_consumer(self, name: str) -> Node | None:
        users = self.consumers.get(name, [])
        if len(users) == 1 and name not in self.graph_outputs:
            return users[0]
        return None


def _scalar_const(graph: Graph, name: str) -> bool:
    value = graph.initializers.get(name)
    return value is not None and value.size == 1


def fuse_matmul_epilogues(graph: Graph) -> Graph:
    """Replace MatMul(+bias)(+activation)(+residual) chains by `sparsejit::FusedMatMul` nodes."""
    uses = _Uses(graph)
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    replaced: dict[int, Node | None] = {}
    for node in graph.nodes:
        if node.op_type != "MatMul" or node.domain or id(node) in replaced:
            continue
        weight = graph.initializers.get(node.inputs[1])
        a_info = graph.value_info.get(node.inputs[0])
        if (weight is None or weight.ndim != 2 or weight.dtype != np.float32 or a_info is None
                or a_info.dtype != np.float32 or len(a_info.shape) < 2):
            continue
        epilogue = match_epilogue(graph, uses, index, node, weight.shape[1])
        chain = [node, *epilogue.nodes]
        bias, activation, residual, y = epilogue.bias, epilogue.activation, epilogue.residual, epilogue.output

        if len(chain) == 1:
            continue
        fused = Node("FusedMatMul", [node.inputs[0], node.inputs[1], bias, residual], [y],
                     {"activation": activation}, FUSED_DOMAIN, node.name + "/fused")
        last = max(chain, key=lambda n: index[id(n)])
        for member in chain:
            replaced[id(member)] = fused if member is last else None
    return _rebuild(graph, replaced)


@dataclass
class Epilogue:
    """What follows a matrix product and can run in its epilogue: bias, activation, residual."""

    nodes: list[Node]
    output: str
    bias: str = ""
    activation: str | None = None
    residual: str = ""


def match_epilogue(graph: Graph, uses: _Uses, index: dict[int, int], product: Node, n_cols: int) -> Epilogue:
    """Bias Add (constant [N], stored as a new writable [N] initializer), then an activation recognised
    numerically, then a residual Add of a same-shaped float32 tensor — each optional, in that order."""
    found = Epilogue([], product.outputs[0])
    nxt = uses.sole_consumer(found.output)
    if nxt is not None and nxt.op_type == "Add" and not nxt.domain:
        other = nxt.inputs[1] if nxt.inputs[0] == found.output else nxt.inputs[0]
        value = graph.initializers.get(other)
        if (value is not None and value.size == n_cols and value.shape[-1:] == (n_cols,)
                and value.dtype == np.float32):
            found.bias = f"{product.name}/bias"
            graph.initializers[found.bias] = np.array(value.reshape(n_cols), dtype=np.float32)  # writable copy
            graph.value_info[found.bias] = Value(found.bias, np.dtype(np.float32), (n_cols,))
            found.nodes.append(nxt)
            found.output = nxt.outputs[0]
    last = found.nodes[-1] if found.nodes else product
    act = _match_activation(graph, uses, index[id(last)], found.output)
    if act is not None:
        found.activation, act_nodes = act
        found.nodes.extend(act_nodes)
        found.output = act_nodes[-1].outputs[0]
    nxt = uses.sole_consumer(found.output)
    if nxt is not None and nxt.op_type == "Add" and not nxt.domain and nxt.inputs[0] != nxt.inputs[1]:
        other = nxt.inputs[1] if nxt.inputs[0] == found.output else nxt.inputs[0]
        info = graph.value_info.get(other)
        if (other not in graph.initializers and info is not None and info.dtype == np.float32
                and tuple(info.shape) == tuple(graph.value_info[found.output].shape)):
            found.residual = other
            found.nodes.append(nxt)
            found.output = nxt.outputs[0]
    return found


def _match_activation(graph: Graph, uses: _Uses, start: int, y: str) -> tuple[str, list[Node]] | None:
    """The largest closed elementwise subgraph f(y) right after `start` that computes a known activation."""
    produced = {y}
    members: list[Node] = []
    best: tuple[str, list[Node]] | None = None
    for node in graph.nodes[start + 1: start + 16]:
        if node.domain or node.op_type not in ELEMENTWISE_OPS:
            continue
        inputs = [n for n in node.inputs if n]
        if not any(n in produced for n in inputs):
            continue
        if not all(n in produced or _scalar_const(graph, n) for n in inputs):
            break
        members.append(node)
        produced.update(o for o in node.outputs if o)
        escaping = [v for v in produced
                    if v in uses.graph_outputs or any(c not in members for c in uses.consumers.get(v, []))]
        if escaping == [node.outputs[0]]:
            name = _identify(graph, members, y)
            if name is not None:
                best = (name, list(members))
    return best


def _identify(graph: Graph, members: list[Node], y: str) -> str | None:
    values: dict[str, np.ndarray] = {y: _SAMPLES}
    with np.errstate(all="ignore"):
        for node in members:
            args = [values[n] if n in values else graph.initializers.get(n) if n else None for n in node.inputs]
            if any(n and a is None for n, a in zip(node.inputs, args, strict=True)):
                return None
            try:
                outs = evaluate(node, graph.opset(node.domain), args)
            except Exception:
                return None
            values.update(zip(node.outputs, outs, strict=False))
        got = values[members[-1].outputs[0]].astype(np.float64)
    if got.shape != _SAMPLES.shape:
        return None
    x = _SAMPLES.astype(np.float64)
    for name, fn in _ACTIVATIONS.items():
        ref = fn(x)
        if np.all(np.abs(got - ref) <= 1e-5 * (1.0 + np.abs(ref))):
            return name
    return None


_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_QDQ_TYPES = (np.dtype(np.int8), np.dtype(np.uint8))


def _is_elementwise(graph: Graph, node: Node) -> bool:
    """An ai.onnx elementwise op, or a QuantizeLinear / DequantizeLinear with one constant scale and
    zero point for the whole tensor (8-bit): then it is a scalar function of its input too, and a
    Q -> DQ pair (a fake-quantised activation) runs as one kernel with no 8-bit tensor in between."""
    if node.domain or len(node.outputs) != 1:
        return False
    if node.op_type in ELEMENTWISE_OPS:
        return True
    if node.op_type not in _QDQ_OPS or node.attrs.get("block_size", 0):
        return False
    eight_bit = node.outputs[0] if node.op_type == "QuantizeLinear" else node.inputs[0]
    zero = node.inputs[2] if len(node.inputs) > 2 else ""
    return (graph.value_info[eight_bit].dtype in _QDQ_TYPES and _scalar_const(graph, node.inputs[1])
            and (not zero or _scalar_const(graph, zero)))


def fuse_elementwise_chains(graph: Graph) -> Graph:
    """Merge chains of elementwise nodes (each output feeding only the next) into one node."""
    uses = _Uses(graph)
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    tail_group: dict[str, list[Node]] = {}  # output name of a group's last node -> the group
    groups: list[list[Node]] = []
    for node in graph.nodes:
        if not _is_elementwise(graph, node):
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
    replaced: dict[int, Node | None] = {}
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
        for member in group:
            replaced[id(member)] = fused if member is last else None
    del index
    return _rebuild(graph, replaced)


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(shape[::-1], target[::-1], strict=False))


def _rebuild(graph: Graph, replaced: dict[int, Node | None]) -> Graph:
    if not replaced:
        return graph
    nodes = []
    for node in graph.nodes:
        if id(node) in replaced:
            if replaced[id(node)] is not None:
                nodes.append(replaced[id(node)])
        else:
            nodes.append(node)
    graph.nodes = nodes
    used = {name for n in nodes for name in n.inputs if name} | set(graph.output_names)
    graph.initializers = {k: v for k, v in graph.initializers.items() if k in used}
    return graph


def optimise(graph: Graph, *, qkv_merge_all: bool = False) -> Graph:
    """All fusion passes, in order. An attention's Q/K/V int8 products merge into one in buckets of up
    to `qkv_merge.MAX_ROWS` rows (measured for the AVX-512 VNNI products), or in every bucket with
    `qkv_merge_all` (measured for the AMX ones: the engine says which kernels it will run)."""
    from sparsejit.graph.attention import fuse_attention
    from sparsejit.graph.cse import merge_duplicate_nodes
    from sparsejit.graph.qkv_merge import MAX_ROWS, merge_qkv_products
    from sparsejit.graph.quant_fusion import fuse_quantized

    rows = None if qkv_merge_all else MAX_ROWS
    graph = merge_qkv_products(fuse_attention(fuse_matmul_epilogues(fuse_quantized(graph))), rows)
    return fuse_elementwise_chains(merge_duplicate_nodes(graph))
