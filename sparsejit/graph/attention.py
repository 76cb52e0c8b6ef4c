"""Fuse the attention block into one `sparsejit::Attention` node.

Matched shape (what BERT-family exports spell in several ways):

    q = [Mul/Div by scalars] Transpose(Reshape(Q [b, s, h*d] -> [b, s, h, d]))   -> [b, h, s, d]
    k = ... of K, laid out as Kᵀ [b, h, d, s] (one Transpose [0,2,3,1], or [0,2,1,3] then [0,1,3,2])
    v = ... of V                                                                  -> [b, h, s, d]
    S = MatMul(q, k); X = S * c ± term ± term ...  (scalar Mul/Div, Add/Sub of mask-like tensors)
    P = Softmax(X, axis=-1) [then Where(IsNaN(P), 0, P)]
    O = MatMul(P, v) -> Transpose [0,2,1,3] -> Reshape [b, s, h*d]

The fused node reads Q, K, V in the projections' own [b, s, h*d] layout and writes [b, s, h*d]
directly: no head transposes, and scores exist one query row at a time. Anything that does not fit
is left as it was.
"""

from __future__ import annotations

import numpy as np

from sparsejit.graph.fake_quant import FakeQuant, fake_quant_producing, fake_quant_reading
from sparsejit.graph.ir import Graph, Node, Value
from sparsejit.graph.pass_context import PassContext
from sparsejit.graph.rewrite import FUSED_DOMAIN, Rewriter, Uses, add_constant

NAME = "attention"


def _scalar(graph: Graph, name: str) -> float | None:
    value = graph.initializers.get(name)
    if value is None or value.size != 1 or not np.issubdtype(value.dtype, np.floating):
        return None
    return float(value.reshape(()))


def _perm(node: Node, rank: int) -> list[int]:
    return list(node.attrs.get("perm", list(range(rank))[::-1]))


def _trace_head_input(graph: Graph, uses: Uses, name: str, chain: list[Node]) -> tuple[str, list[int], float] | None:
    """Walk back from a MatMul operand through scalar scales and transposes to a Reshape
    [b, s, h*d] -> [b, s, h, d]. Returns (source, permutation applied after the reshape, scale)."""
    producers = uses.producers
    perm = [0, 1, 2, 3]
    scale = 1.0
    current = name
    while True:
        node = producers.get(current)
        if node is None or node.domain or uses.sole_consumer(current) is None:
            return None
        if node.op_type in ("Mul", "Div"):
            a, b = node.inputs
            if _scalar(graph, b) is not None and a not in graph.initializers:
                factor, current = _scalar(graph, b), a
            elif node.op_type == "Mul" and _scalar(graph, a) is not None:
                factor, current = _scalar(graph, a), b
            else:
                return None
            scale = scale * factor if node.op_type == "Mul" else scale / factor
        elif node.op_type == "Transpose":
            rank = len(graph.value_info[node.inputs[0]].shape)
            p = _perm(node, rank)
            if rank == 3:  # a transpose in the [b*h, x, y] view of [b, h, x, y]
                if p[0] != 0:
                    return None
                p = [0, 1, p[1] + 1, p[2] + 1]
            elif rank != 4:
                return None
            perm = [p[i] for i in perm]  # compose: out = in.transpose(p), then later perms
            current = node.inputs[0]
        elif node.op_type == "Reshape":
            src = tuple(graph.value_info[node.inputs[0]].shape)
            dst = tuple(graph.value_info[node.outputs[0]].shape)
            if len(src) == 3 and len(dst) == 4 and dst[:2] == src[:2] and dst[2] * dst[3] == src[2]:
                chain.append(node)  # [b, s, h*d] -> [b, s, h, d]: the projection itself
                return node.inputs[0], perm, scale
            merged = (len(src) == 4 and len(dst) == 3 and dst == (src[0] * src[1],) + src[2:]) or (
                len(src) == 3 and len(dst) == 4 and src == (dst[0] * dst[1],) + dst[2:])
            if not merged:  # only [b, h, x, y] <-> [b*h, x, y] views keep the 4-D index mapping
                return None
            current = node.inputs[0]
        else:
            return None
        chain.append(node)


def run(graph: Graph, ctx: PassContext) -> Graph:
    """Replace every matched attention block by a `sparsejit::Attention` node (when the head size is a
    multiple of `ctx.attention_head_multiple`, what the attention kernel needs)."""
    uses = Uses(graph)
    rewriter = Rewriter(graph)
    for softmax in list(graph.nodes):
        if softmax.op_type != "Softmax" or softmax.domain or rewriter.is_claimed(softmax):
            continue
        placements = _match(graph, uses, uses.producers, softmax, ctx.attention_head_multiple)
        if placements is None or any(rewriter.is_claimed(slot) for slot, _ in placements):
            continue
        for slot, node in placements:
            rewriter.replace([slot], node)
    return rewriter.finish()


def _match(graph: Graph, uses: Uses, producers: dict[str, Node], softmax: Node, multiple: int):
    x_info = graph.value_info.get(softmax.inputs[0])
    if x_info is None or len(x_info.shape) != 4 or softmax.attrs.get("axis", -1) not in (-1, 3):
        return None
    if graph.opset("") < 13 or x_info.dtype != np.float32:
        return None
    members: list[Node] = [softmax]
    fq: list[list[float] | None] = [None, None, None, None]  # scores, scores + terms, P, P after NaN -> 0
    quantised = _quantised_scores(graph, uses, softmax.inputs[0])
    if quantised is not None:
        path, fq[0], fq[1], pairs = quantised
        members += pairs
    else:
        path = _scores_path(graph, producers, softmax.inputs[0], 0)
    if path is None:
        return None
    scores_mm = path[0][0]
    alpha = 1.0
    terms: list[tuple[str, float]] = []
    for node, idx in path[1:]:  # X = S * alpha + sum(sign * term), built forward from the MatMul
        if uses.sole_consumer(node.inputs[idx]) is not node:
            return None
        other = node.inputs[1 - idx]
        factor = _scalar(graph, other)
        if node.op_type == "Mul" and factor is not None:
            pass
        elif node.op_type == "Div" and idx == 0 and factor is not None:
            factor = 1.0 / factor
        elif node.op_type == "Add":
            terms.append((other, 1.0))
            factor = None
        elif node.op_type == "Sub" and idx == 0:
            terms.append((other, -1.0))
            factor = None
        else:
            return None
        if factor is not None:
            alpha *= factor
            terms = [(t, sgn * factor) for t, sgn in terms]
        members.append(node)
    if uses.sole_consumer(softmax.inputs[0]) is not softmax:
        return None
    members.append(scores_mm)
    chain: list[Node] = []
    inputs = []  # (source, permutation, scale, fake quantisation of the scaled input, its chain nodes)
    for name in scores_mm.inputs:
        pair = fake_quant_producing(graph, uses, name)
        own: list[Node] = []
        traced = _trace_head_input(graph, uses, pair.source if pair else name, own)
        if traced is None:
            return None
        inputs.append((*traced, pair, own))
        if pair is None:
            chain += own
    q, k = inputs
    if q[1] != [0, 2, 1, 3] or k[1] != [0, 2, 3, 1]:
        return None
    # epilogue between softmax and P @ V: [rounding], nothing or Where(IsNaN(P), 0, P), [rounding]
    p_name = softmax.outputs[0]
    nan_to_zero = False
    pair = fake_quant_reading(graph, uses, p_name)
    if pair is not None:
        fq[2], p_name = pair.bounds, pair.output
        members += [pair.quantize, pair.dequantize]
    nxt = uses.consumers.get(p_name, [])
    if len(nxt) == 2 and {n.op_type for n in nxt} == {"IsNaN", "Where"}:
        isnan = next(n for n in nxt if n.op_type == "IsNaN")
        where = next(n for n in nxt if n.op_type == "Where")
        zero = _scalar(graph, where.inputs[1])
        if (where.inputs[0] != isnan.outputs[0] or where.inputs[2] != p_name or zero != 0.0
                or uses.sole_consumer(isnan.outputs[0]) is not where):
            return None
        members += [isnan, where]
        p_name, nan_to_zero = where.outputs[0], True
        pair = fake_quant_reading(graph, uses, p_name)
        if pair is not None:
            fq[3], p_name = pair.bounds, pair.output
            members += [pair.quantize, pair.dequantize]
    pv = uses.sole_consumer(p_name)
    if pv is None or pv.op_type != "MatMul" or pv.domain or pv.inputs[0] != p_name:
        return None
    members.append(pv)
    v = _trace_head_input(graph, uses, pv.inputs[1], chain)
    if v is None or v[1] != [0, 2, 1, 3] or v[2] != 1.0:
        return None
    # output: [rounding] -> [Reshape to same shape] -> Transpose [0,2,1,3] -> Reshape [b, s, h*d]
    out = pv.outputs[0]
    out_pair = fake_quant_reading(graph, uses, out)
    if out_pair is not None:
        out = out_pair.output
    node = uses.sole_consumer(out)
    if node is not None and node.op_type == "Reshape" and tuple(graph.value_info[node.outputs[0]].shape) == tuple(
            graph.value_info[out].shape):
        members.append(node)
        out = node.outputs[0]
        node = uses.sole_consumer(out)
    if node is None or node.op_type != "Transpose" or _perm(node, 4) != [0, 2, 1, 3]:
        return None
    members.append(node)
    out_transpose = node
    node = uses.sole_consumer(node.outputs[0])
    if node is None or node.op_type != "Reshape" or len(graph.value_info[node.outputs[0]].shape) != 3:
        return None
    members.append(node)
    last = node
    members += chain
    b, h, s, d = graph.value_info[pv.outputs[0]].shape
    if d % multiple:
        return None
    for src in (q[0], k[0], v[0]):
        if tuple(graph.value_info[src].shape) != (b, graph.value_info[src].shape[1], h * d):
            return None
    if len(terms) > 2:
        return None
    # A rounded Q or K input: the scale and the rounding move to the projection's own layout (both are
    # elementwise, so they commute with the reshape and transposes), in the slots of the nodes replaced
    placements: list[tuple[Node, Node | None]] = []
    sources, scale = [], alpha
    for src, _, factor, pair, own in (q, k):
        if pair is None:
            sources.append(src)
            scale *= factor
            continue
        new = _rounded_input(graph, src, factor, pair, softmax.name)
        slots = sorted(own + [pair.quantize, pair.dequantize], key=lambda n: graph.nodes.index(n))
        placements += list(zip(slots, new + [None] * (len(slots) - len(new)), strict=True))
        sources.append(new[-1].outputs[0])
    attrs = {"num_heads": h, "head_size": d, "scale": scale, "term_signs": [sgn for _, sgn in terms],
             "nan_to_zero": nan_to_zero}
    if any(fq):
        attrs["fake_quant"] = fq
    fused_inputs = sources + [v[0]] + [t for t, _ in terms]
    if out_pair is None:
        fused = Node("Attention", fused_inputs, [last.outputs[0]], attrs, FUSED_DOMAIN, softmax.name + "/attention")
        return placements + [(m, fused if m is last else None) for m in members]
    # a rounded output: the attention writes the raw rows, the rounding follows in the [b, s, h*d] layout
    raw = softmax.name + "/attention_output"
    shape = graph.value_info[last.outputs[0]].shape
    _declare(graph, [raw], np.dtype(np.float32), shape)
    _declare(graph, [raw + "/q"], np.dtype(out_pair.grid[2]), shape)
    fused = Node("Attention", fused_inputs, [raw], attrs, FUSED_DOMAIN, softmax.name + "/attention")
    quantize = Node("QuantizeLinear", [raw, *out_pair.quantize.inputs[1:]], [raw + "/q"],
                    dict(out_pair.quantize.attrs), "", out_pair.quantize.name)
    dequantize = Node("DequantizeLinear", [raw + "/q", *out_pair.dequantize.inputs[1:]], [last.outputs[0]],
                      dict(out_pair.dequantize.attrs), "", out_pair.dequantize.name)
    members += [out_pair.quantize, out_pair.dequantize]
    by = {id(pv): fused, id(out_transpose): quantize, id(last): dequantize}
    return placements + [(m, by.get(id(m))) for m in members]


def _scores_path(graph: Graph, producers: dict[str, Node], name: str, depth: int):
    """[(MatMul, -1), (node, index of the input on the path), ...] from the scores MatMul to `name`."""
    node = producers.get(name)
    if node is None or node.domain or depth > 8:
        return None
    if node.op_type == "MatMul":
        if any(i in graph.initializers for i in node.inputs):
            return None
        return [(node, -1)]
    if node.op_type not in ("Mul", "Div", "Add", "Sub"):
        return None
    for idx, inp in enumerate(node.inputs[:2]):
        if inp in graph.initializers:
            continue
        sub = _scores_path(graph, producers, inp, depth + 1)
        if sub is not None:
            return sub + [(node, idx)]
    return None


def _quantised_scores(graph: Graph, uses: Uses, name: str):
    """The scores of a QDQ graph: X = round(round(S) + term) with S = MatMul(q, k), each rounding a
    Q -> DQ pair (the first optional). Returns (path as `_scores_path`, rounding of S or None, rounding of
    X, the pairs' nodes), or None."""
    outer = fake_quant_producing(graph, uses, name)
    if outer is None or uses.sole_consumer(outer.source) is not outer.quantize:
        return None
    add = uses.producers.get(outer.source)
    if add is None or add.op_type != "Add" or add.domain:
        return None
    pairs = [outer.quantize, outer.dequantize]
    for idx in (0, 1):
        inner = fake_quant_producing(graph, uses, add.inputs[idx])
        scores = inner.source if inner is not None else add.inputs[idx]
        mm = uses.producers.get(scores)
        if mm is None or mm.op_type != "MatMul" or mm.domain or any(i in graph.initializers for i in mm.inputs):
            continue
        if uses.sole_consumer(scores) is None or uses.sole_consumer(add.inputs[idx]) is not add:
            return None
        if inner is not None:
            pairs += [inner.quantize, inner.dequantize]
        return [(mm, -1), (add, idx)], inner.bounds if inner else None, outer.bounds, pairs
    return None


def _rounded_input(graph: Graph, src: str, factor: float, pair: FakeQuant, tag: str) -> list[Node]:
    """round(src * factor) on the pair's grid, in src's own layout: [Mul,] Quantize, Dequantize."""
    nodes, current = [], src
    shape = graph.value_info[src].shape
    _declare(graph, [f"{src}/{tag}/scaled", f"{src}/{tag}/rounded"], np.dtype(np.float32), shape)
    _declare(graph, [f"{src}/{tag}/q"], np.dtype(pair.grid[2]), shape)
    if factor != 1.0:
        const = add_constant(graph, f"{src}/{tag}/scale", np.array(factor, np.float32))
        current = f"{src}/{tag}/scaled"
        nodes.append(Node("Mul", [src, const], [current], {}, "", current))
    q_out = f"{src}/{tag}/q"
    nodes.append(Node("QuantizeLinear", [current, *pair.quantize.inputs[1:]], [q_out], dict(pair.quantize.attrs),
                      "", q_out))
    nodes.append(Node("DequantizeLinear", [q_out, *pair.dequantize.inputs[1:]], [f"{src}/{tag}/rounded"],
                      dict(pair.dequantize.attrs), "", f"{src}/{tag}/rounded"))
    return nodes


def _declare(graph: Graph, names: list[str], dtype: np.dtype, shape) -> None:  # type: ignore[no-untyped-def]
    for name in names:
        graph.value_info[name] = Value(name, dtype, tuple(shape))
