"""Quantised-graph rewrites, run on a specialised graph before the fp32 fusions (`fuse_quantized`).

- `MatMulNBits` (4-bit weights) -> `MatMul` with its weight dequantised to float32 once per model
  (memoised on the source tensor, shared by every bucket), so the fp32 epilogue fusions apply.
- QDQ: `MatMul(DequantizeLinear(QuantizeLinear(x, s, z)), W)` where W is a constant folded from
  `DequantizeLinear(W_q)` (per-tensor or per-column) -> `sparsejit::QMatMul(x, W_q)` in static mode.
- dynamic (quantize_dynamic's QOperator form): `DynamicQuantizeLinear(x)` -> `MatMulInteger(., W_q)`
  -> `Cast(float)` -> `Mul(., x_scale * w_scale)` -> `sparsejit::QMatMul(x, W_q)` in dynamic mode.
- then a bias `Add`, an activation (recognised numerically, as in `fusion.py`) and a residual `Add`
  after each QMatMul move into its epilogue; nodes left without consumers are removed.

QMatMul inputs: [x, w_q, w_scale, w_zero | "", bias | "", residual | ""]; attrs: mode ("static" |
"dynamic"), a_scale, a_zero (static; the zero point in the uint8 domain: int8 zero points + 128),
activation.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

from sparsejit.graph.fusion import _Uses, match_epilogue
from sparsejit.graph.ir import Graph, Node, Value
from sparsejit.graph.quant_ops import MS_DOMAIN, QuantSource, int8_source, matmulnbits_weight

DOMAIN = "sparsejit"
_FLOAT = 1  # onnx TensorProto.FLOAT

_derived: dict[tuple[int, str], tuple[weakref.ref, np.ndarray]] = {}
_derived_lock = threading.Lock()


def _memo(source: np.ndarray, tag: str, build) -> np.ndarray:  # type: ignore[no-untyped-def]
    """`build()` computed once per live `source` array (weights are shared by every bucket)."""
    key = (id(source), tag)
    with _derived_lock:
        entry = _derived.get(key)
        if entry is not None and entry[0]() is source:
            return entry[1]
    value = build()

    def forget(_ref: weakref.ref, key: tuple[int, str] = key) -> None:
        with _derived_lock:
            if key in _derived and _derived[key][0] is _ref:
                del _derived[key]

    with _derived_lock:
        _derived[key] = (weakref.ref(source, forget), value)
    return value


def _scalar(graph: Graph, name: str) -> np.ndarray | None:
    value = graph.initializers.get(name) if name else None
    return value if value is not None and value.size == 1 else None


def _add_const(graph: Graph, name: str, value: np.ndarray) -> str:
    graph.initializers[name] = value
    graph.value_info[name] = Value(name, value.dtype, tuple(value.shape))
    return name


# ----------------------------------------------------------------------------------------------
# MatMulNBits -> MatMul


def _rewrite_matmulnbits(graph: Graph) -> None:
    for i, node in enumerate(graph.nodes):
        if node.domain != MS_DOMAIN or node.op_type != "MatMulNBits":
            continue
        names = list(node.inputs[1:4]) + [""] * (3 - len(node.inputs[1:4]))
        extra = [n for n in node.inputs[4:] if n]
        b = graph.initializers.get(names[0])
        scales = graph.initializers.get(names[1])
        zeros = graph.initializers.get(names[2]) if names[2] else None
        if b is None or scales is None or (names[2] and zeros is None) or extra:
            continue
        try:
            w = _memo(b, f"nbits:{node.attrs.get('K')}:{node.attrs.get('N')}:{id(scales)}:{id(zeros)}",
                      lambda node=node, b=b, scales=scales, zeros=zeros: matmulnbits_weight(node, b, scales, zeros))
        except Exception:
            continue
        w_name = _add_const(graph, f"{names[0]}/float32", w)
        graph.nodes[i] = Node("MatMul", [node.inputs[0], w_name], list(node.outputs), {}, "", node.name)


# ----------------------------------------------------------------------------------------------
# QDQ and dynamic patterns -> QMatMul


def _weight_source(w: np.ndarray) -> QuantSource | None:
    src = int8_source(w)
    if src is None or src.q.shape != w.shape or w.ndim != 2:
        return None
    n = w.shape[1]
    if src.scale.size not in (1, n) or (src.zero is not None and src.zero.size not in (1, n)):
        return None
    if src.scale.size == n and n != 1 and src.axis % 2 != 1:
        return None
    return src


def _fuse_qdq(graph: Graph, producers: dict[str, Node]) -> dict[int, Node]:
    out: dict[int, Node] = {}
    for node in graph.nodes:
        if node.op_type != "MatMul" or node.domain:
            continue
        w = graph.initializers.get(node.inputs[1])
        src = _weight_source(w) if w is not None else None
        dq = producers.get(node.inputs[0])
        if src is None or dq is None or dq.op_type != "DequantizeLinear" or dq.domain:
            continue
        q = producers.get(dq.inputs[0])
        if q is None or q.op_type != "QuantizeLinear" or q.domain:
            continue
        x_info = graph.value_info.get(q.inputs[0])
        s_dq, s_q = _scalar(graph, dq.inputs[1]), _scalar(graph, q.inputs[1])
        z_dq = _scalar(graph, dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] else None
        z_q = _scalar(graph, q.inputs[2]) if len(q.inputs) > 2 and q.inputs[2] else None
        if (x_info is None or x_info.dtype != np.float32 or s_dq is None or s_q is None
                or float(s_dq) != float(s_q) or (z_dq is None) != (z_q is None)
                or (z_dq is not None and int(z_dq) != int(z_q)) or len(x_info.shape) < 1):
            continue
        q_dtype = z_q.dtype if z_q is not None else np.dtype(np.uint8)
        if q_dtype not in (np.uint8, np.int8) or q.attrs.get("block_size") or dq.attrs.get("block_size"):
            continue
        a_zero = (int(z_q) if z_q is not None else 0) + (128 if q_dtype == np.int8 else 0)
        base = node.inputs[1]
        inputs = [q.inputs[0], _add_const(graph, f"{base}/int8", src.q),
                  _add_const(graph, f"{base}/int8_scale", src.scale.astype(np.float32)),
                  _add_const(graph, f"{base}/int8_zero", src.zero) if src.zero is not None else "", "", ""]
        out[id(node)] = Node("QMatMul", inputs, list(node.outputs),
                             {"mode": "static", "a_scale": float(s_q), "a_zero": a_zero, "activation": None},
                             DOMAIN, node.name + "/int8")
    return out


def _fuse_dynamic(graph: Graph, producers: dict[str, Node], uses: _Uses) -> dict[int, Node | None]:
    out: dict[int, Node | None] = {}
    for node in graph.nodes:
        if node.op_type != "MatMulInteger" or node.domain:
            continue
        dql = producers.get(node.inputs[0])
        w = graph.initializers.get(node.inputs[1])
        if (dql is None or dql.op_type != "DynamicQuantizeLinear" or w is None or w.ndim != 2
                or len(node.inputs) < 3 or node.inputs[2] != dql.outputs[2]):
            continue
        w_zero = node.inputs[3] if len(node.inputs) > 3 else ""
        if w_zero and w_zero not in graph.initializers:
            continue
        cast = uses.sole_consumer(node.outputs[0])
        if cast is None or cast.op_type != "Cast" or int(cast.attrs.get("to", 0)) != _FLOAT:
            continue
        mul = uses.sole_consumer(cast.outputs[0])
        if mul is None or mul.op_type != "Mul":
            continue
        other = mul.inputs[1] if mul.inputs[0] == cast.outputs[0] else mul.inputs[0]
        smul = producers.get(other)
        if smul is None or smul.op_type != "Mul" or dql.outputs[1] not in smul.inputs:
            continue
        w_scale = smul.inputs[1] if smul.inputs[0] == dql.outputs[1] else smul.inputs[0]
        ws = graph.initializers.get(w_scale)
        if ws is None or ws.size not in (1, w.shape[1]):
            continue
        fused = Node("QMatMul", [dql.inputs[0], node.inputs[1], w_scale, w_zero, "", ""], list(mul.outputs),
                     {"mode": "dynamic", "activation": None}, DOMAIN, node.name + "/int8")
        out[id(node)] = None
        out[id(cast)] = None
        out[id(mul)] = fused
    return out


# ----------------------------------------------------------------------------------------------
# epilogues, dead code


def _fuse_epilogues(graph: Graph) -> None:
    uses = _Uses(graph)
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    replaced: dict[int, Node | None] = {}
    for node in graph.nodes:
        if node.op_type != "QMatMul" or node.domain != DOMAIN or id(node) in replaced:
            continue
        epilogue = match_epilogue(graph, uses, index, node, graph.initializers[node.inputs[1]].shape[1])
        chain = epilogue.nodes
        bias, activation, residual, y = epilogue.bias, epilogue.activation, epilogue.residual, epilogue.output
        if not chain:
            continue
        inputs = list(node.inputs[:4]) + [bias, residual]
        fused = Node("QMatMul", inputs, [y], dict(node.attrs, activation=activation), DOMAIN, node.name)
        members = [node, *chain]
        final = max(members, key=lambda n: index[id(n)])
        for member in members:
            replaced[id(member)] = fused if member is final else None
    _apply(graph, replaced)


def _apply(graph: Graph, replaced: dict[int, Node | None]) -> None:
    if replaced:
        graph.nodes = [replaced[id(n)] if id(n) in replaced else n for n in graph.nodes
                       if id(n) not in replaced or replaced[id(n)] is not None]


def _remove_dead(graph: Graph) -> None:
    needed = set(graph.output_names)
    kept: list[Node] = []
    for node in reversed(graph.nodes):
        if any(o and o in needed for o in node.outputs):
            kept.append(node)
            needed.update(n for n in node.inputs if n)
    graph.nodes = kept[::-1]
    graph.initializers = {k: v for k, v in graph.initializers.items() if k in needed}


def fuse_quantized(graph: Graph) -> Graph:
    """All quantised-graph rewrites (see the module docstring). Modifies and returns `graph`."""
    kinds = {(n.domain, n.op_type) for n in graph.nodes}
    if not kinds & {(MS_DOMAIN, "MatMulNBits"), ("", "DequantizeLinear"), ("", "MatMulInteger"), ("", "MatMul")}:
        return graph
    _rewrite_matmulnbits(graph)
    producers = graph.producers()
    _apply(graph, _fuse_qdq(graph, producers))
    _apply(graph, _fuse_dynamic(graph, producers, _Uses(graph)))
    if any(n.op_type == "QMatMul" and n.domain == DOMAIN for n in graph.nodes):
        _fuse_epilogues(graph)
        _remove_dead(graph)
    return graph
