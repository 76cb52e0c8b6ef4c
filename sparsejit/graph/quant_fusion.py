"""Quantised-graph rewrites, run on a specialised graph before the fp32 fusions (pass `run`).

- `MatMulNBits` (4-bit weights) -> `MatMul` with its weight dequantised to float32 once per model
  (memoised on the source tensor, shared by every bucket), so the fp32 epilogue fusions apply.
- QDQ: `MatMul(DequantizeLinear(QuantizeLinear(x, s, z)), W)` where W is a constant folded from
  `DequantizeLinear(W_q)` (per-tensor or per-column) -> `sparsejit::QMatMul(x, W_q)` in static mode.
- dynamic (quantize_dynamic's QOperator form): `DynamicQuantizeLinear(x)` -> `MatMulInteger(., W_q)`
  -> `Cast(float)` -> `Mul(., x_scale * w_scale)` -> `sparsejit::QMatMul(x, W_q)` in dynamic mode.
- then a bias `Add`, an activation (recognised numerically, see `epilogue`) and a residual `Add`
  after each QMatMul move into its epilogue; nodes left without consumers are removed.

QMatMul inputs: [x, w_q, w_scale, w_zero | "", bias | "", residual | "", x_multiplier (optional, from
`smooth_quant`)]; attrs: mode ("static" |
"dynamic"), a_scale, a_zero (static; the zero point in the uint8 domain: int8 zero points + 128),
activation.
"""

from __future__ import annotations

import numpy as np

from sparsejit.errors import UnsupportedOperatorError
from sparsejit.graph.epilogue import bias_constant, is_residual, match_epilogue, match_rounded_gelu
from sparsejit.graph.fake_quant import fake_quant_reading
from sparsejit.graph.ir import Graph, Node, QuantSource, Value
from sparsejit.graph.quant_ops import MS_DOMAIN, dequantized_source, matmulnbits_weight
from sparsejit.graph.rewrite import FUSED_DOMAIN as DOMAIN
from sparsejit.graph.rewrite import (
    Rewriter,
    Uses,
    add_constant,
    derived_constant,
    remove_dead_nodes,
    scalar_constant,
)
from sparsejit.graph.specialise import fold_constants

NAME = "quant_fusion"
_FLOAT = 1  # onnx TensorProto.FLOAT


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
            w = derived_constant(
                b, f"nbits:{node.attrs.get('K')}:{node.attrs.get('N')}:{id(scales)}:{id(zeros)}",
                lambda node=node, b=b, scales=scales, zeros=zeros: matmulnbits_weight(node, b, scales, zeros))
        except UnsupportedOperatorError:
            continue  # left as it is: its lowering raises the same error, naming the node
        w_name = add_constant(graph, f"{names[0]}/float32", w)
        graph.nodes[i] = Node("MatMul", [node.inputs[0], w_name], list(node.outputs), {}, "", node.name)


# ----------------------------------------------------------------------------------------------
# QDQ and dynamic patterns -> QMatMul


def _weight_source(graph: Graph, name: str, producers: dict[str, Node]) -> QuantSource | None:
    """The 8-bit source of constant weight `name` when a product can run on it (2-D, per tensor or per
    column): a folded DequantizeLinear's record, or a deferred one (a DequantizeLinear of constants)."""
    w = graph.initializers.get(name)
    src = graph.int8_sources.get(name)
    dq = producers.get(name)
    if w is None and dq is not None and dq.op_type == "DequantizeLinear" and not dq.domain:
        arrays = [graph.initializers.get(i) if i else None for i in dq.inputs]
        if all(a is not None for i, a in zip(dq.inputs, arrays, strict=True) if i):
            src = dequantized_source(dq, arrays)
            w = src.q if src is not None else None
    if w is None or src is None or src.q.shape != w.shape or w.ndim != 2:
        return None
    n = w.shape[1]
    if src.scale.size not in (1, n) or (src.zero is not None and src.zero.size not in (1, n)):
        return None
    if src.scale.size == n and n != 1 and src.axis % 2 != 1:
        return None
    return src


def _fuse_qdq(graph: Graph) -> Graph:
    """MatMul(DQ(Q(x)), W) -> QMatMul(x, W_q). The Q and DQ stay (other readers may need them); the
    dead-node pass removes them when nothing else does."""
    producers = graph.producers()
    rewriter = Rewriter(graph)
    for node in list(graph.nodes):
        if node.op_type != "MatMul" or node.domain:
            continue
        src = _weight_source(graph, node.inputs[1], producers)
        dq = producers.get(node.inputs[0])
        if src is None or dq is None or dq.op_type != "DequantizeLinear" or dq.domain:
            continue
        q = producers.get(dq.inputs[0])
        if q is None or q.op_type != "QuantizeLinear" or q.domain:
            continue
        x_info = graph.value_info.get(q.inputs[0])
        s_dq, s_q = scalar_constant(graph, dq.inputs[1]), scalar_constant(graph, q.inputs[1])
        z_dq = scalar_constant(graph, dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] else None
        z_q = scalar_constant(graph, q.inputs[2]) if len(q.inputs) > 2 and q.inputs[2] else None
        if (x_info is None or x_info.dtype != np.float32 or s_dq is None or s_q is None
                or float(s_dq) != float(s_q) or (z_dq is None) != (z_q is None)
                or (z_dq is not None and int(z_dq) != int(z_q)) or len(x_info.shape) < 1):
            continue
        q_dtype = z_q.dtype if z_q is not None else np.dtype(np.uint8)
        if q_dtype not in (np.uint8, np.int8) or q.attrs.get("block_size") or dq.attrs.get("block_size"):
            continue
        a_zero = (int(z_q) if z_q is not None else 0) + (128 if q_dtype == np.int8 else 0)
        base = node.inputs[1]
        inputs = [q.inputs[0], add_constant(graph, f"{base}/int8", src.q),
                  add_constant(graph, f"{base}/int8_scale", src.scale.astype(np.float32)),
                  add_constant(graph, f"{base}/int8_zero", src.zero) if src.zero is not None else "", "", ""]
        rewriter.substitute(node, Node("QMatMul", inputs, list(node.outputs),
                                       {"mode": "static", "a_scale": float(s_q), "a_zero": a_zero,
                                        "activation": None}, DOMAIN, node.name + "/int8"))
    return rewriter.finish()


def _fuse_dynamic(graph: Graph) -> Graph:
    """DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(scales) -> QMatMul(x, W_q) in dynamic mode."""
    uses = Uses(graph)
    producers = uses.producers
    rewriter = Rewriter(graph)
    for node in list(graph.nodes):
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
        rewriter.replace([node, cast, mul], fused, at=mul)
    return rewriter.finish()


# ----------------------------------------------------------------------------------------------
# epilogues, dead code


def _match_rounded_epilogue(graph: Graph, uses: Uses, rewriter: Rewriter, product: Node, n_cols: int):
    """A QDQ graph's epilogue: product -> [round] -> [Add bias [N] -> [round]] -> [GELU rounding inside]
    -> [Add residual -> [round]], the roundings being Q -> DQ pairs on one per-tensor grid, at least one of
    them. Returns (nodes, bias initializer or "", activation, residual or "", output, [scale, lowest,
    highest] or None per rounding point of `simd_int8.FAKE_QUANT_POINTS`, output grid) or None."""
    nodes: list[Node] = []
    fq: list[list[float] | None] = [None] * 5
    out, bias, residual, activation = product.outputs[0], "", "", None
    grid = None  # the grid of the output, when a rounding is its last step

    def take(point: int) -> None:
        nonlocal out, grid
        pair = fake_quant_reading(graph, uses, out)
        if pair is not None and not (rewriter.is_claimed(pair.quantize) or rewriter.is_claimed(pair.dequantize)):
            fq[point], grid = pair.bounds, pair.grid
            nodes.extend([pair.quantize, pair.dequantize])
            out = pair.output

    def next_add() -> tuple[Node, str] | None:
        add = uses.sole_consumer(out)
        if (add is None or add.op_type != "Add" or add.domain or rewriter.is_claimed(add)
                or add.inputs[0] == add.inputs[1]):
            return None
        return add, add.inputs[1] if add.inputs[0] == out else add.inputs[0]

    take(0)
    found = next_add()
    if found is not None:
        add, other = found
        bias = bias_constant(graph, product, other, n_cols)
        if bias:
            nodes.append(add)
            out, grid = add.outputs[0], None
            take(1)
    if fq[0] is not None or fq[1] is not None:
        last = nodes[-1] if nodes else product
        gelu = match_rounded_gelu(graph, uses, rewriter, rewriter.position(last), out)
        if gelu is not None:
            members, fq[3], fq[4] = gelu
            activation = "gelu_erf"
            nodes.extend(members)
            out, grid = members[-1].outputs[0], None
    found = next_add() if fq[0] is not None or fq[1] is not None else None
    if found is not None:
        add, other = found
        if is_residual(graph, other, out):
            residual = other
            nodes.append(add)
            out, grid = add.outputs[0], None
    if residual or activation:
        take(2)
    if not any(fq):
        return None
    return nodes, bias, activation, residual, out, fq if fq[3] or fq[4] else fq[:3], grid


def _fuse_epilogues(graph: Graph, ctx: object = None) -> Graph:
    uses = Uses(graph)
    rewriter = Rewriter(graph)
    rounding = bool(getattr(ctx, "int8_fake_quant_epilogue", False))
    for node in list(graph.nodes):
        if node.op_type != "QMatMul" or node.domain != DOMAIN or rewriter.is_claimed(node):
            continue
        n_cols = graph.initializers[node.inputs[1]].shape[1]
        rounded = _match_rounded_epilogue(graph, uses, rewriter, node, n_cols) if rounding else None
        if rounded is not None:
            nodes, bias, activation, residual, output, fq, grid = rounded
            attrs = dict(node.attrs, activation=activation, fake_quant=fq)
            if grid is not None:
                attrs["output_grid"] = list(grid)  # read by redundant_requantize
            fused = Node("QMatMul", list(node.inputs[:4]) + [bias, residual], [output], attrs, DOMAIN, node.name)
            rewriter.replace([node, *nodes], fused)
            continue
        epilogue = match_epilogue(graph, uses, rewriter, node, n_cols)
        if not epilogue.nodes:
            continue
        inputs = list(node.inputs[:4]) + [epilogue.bias, epilogue.residual]
        fused = Node("QMatMul", inputs, [epilogue.output], dict(node.attrs, activation=epilogue.activation),
                     DOMAIN, node.name)
        rewriter.replace([node, *epilogue.nodes], fused)
    return rewriter.finish()


def run(graph: Graph, ctx: object = None) -> Graph:
    """All quantised-graph rewrites (see the module docstring). Modifies and returns `graph`."""
    kinds = {(n.domain, n.op_type) for n in graph.nodes}
    if not kinds & {(MS_DOMAIN, "MatMulNBits"), ("", "DequantizeLinear"), ("", "MatMulInteger"), ("", "MatMul")}:
        return graph
    _rewrite_matmulnbits(graph)
    graph = _fuse_qdq(graph)
    graph = _fuse_dynamic(graph)
    if any(n.op_type == "QMatMul" and n.domain == DOMAIN for n in graph.nodes):
        graph = remove_dead_nodes(_fuse_epilogues(graph, ctx))
    return _fold_deferred_dequantize(graph)


def _fold_deferred_dequantize(graph: Graph) -> Graph:
    """Weights whose DequantizeLinear was kept for the int8 fusions and that no int8 product took are
    folded to float32 now, with whatever constant-only nodes follow them."""
    if not any(n.op_type == "DequantizeLinear" and not n.domain
               and all(i in graph.initializers for i in n.inputs if i) for n in graph.nodes):
        return graph
    folded = fold_constants(graph, defer_dequantize=False)
    for name, arr in folded.initializers.items():  # the shapes of the new constants, for later passes
        folded.value_info.setdefault(name, Value(name, arr.dtype, tuple(arr.shape)))
    return folded
