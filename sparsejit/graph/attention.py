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

from sparsejit.graph.ir import Graph, Node
from sparsejit.graph.pass_context import PassContext
from sparsejit.graph.rewrite import FUSED_DOMAIN, Rewriter, Uses

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
        found = _match(graph, uses, uses.producers, softmax, ctx.attention_head_multiple)
        if found is not None:
            fused, members, last = found
            rewriter.replace(members, fused, at=last)
    return rewriter.finish()


def _match(graph: Graph, uses: Uses, producers: dict[str, Node], softmax: Node, multiple: int):
    x_info = graph.value_info.get(softmax.inputs[0])
    if x_info is None or len(x_info.shape) != 4 or softmax.attrs.get("axis", -1) not in (-1, 3):
        return None
    if graph.opset("") < 13 or x_info.dtype != np.float32:
        return None
    members: list[Node] = [softmax]
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
    q = _trace_head_input(graph, uses, scores_mm.inputs[0], chain)
    k = _trace_head_input(graph, uses, scores_mm.inputs[1], chain)
    if q is None or k is None or q[1] != [0, 2, 1, 3] or k[1] != [0, 2, 3, 1]:
        return None
    # epilogue between softmax and P @ V: nothing, or Where(IsNaN(P), 0, P)
    p_name = softmax.outputs[0]
    nan_to_zero = False
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
    pv = uses.sole_consumer(p_name)
    if pv is None or pv.op_type != "MatMul" or pv.domain or pv.inputs[0] != p_name:
        return None
    members.append(pv)
    v = _trace_head_input(graph, uses, pv.inputs[1], chain)
    if v is None or v[1] != [0, 2, 1, 3] or v[2] != 1.0:
        return None
    # output: [Reshape to same shape] -> Transpose [0,2,1,3] -> Reshape [b, s, h*d]
    out = pv.outputs[0]
    node = uses.sole_consumer(out)
    if node is not None and node.op_type == "Reshape" and tuple(graph.value_info[node.outputs[0]].shape) == tuple(
            graph.value_info[out].shape):
        members.append(node)
        out = node.outputs[0]
        node = uses.sole_consumer(out)
    if node is None or node.op_type != "Transpose" or _perm(node, 4) != [0, 2, 1, 3]:
        return None
    members.append(node)
    node = uses.sole_consumer(node.outputs[0])
    if node is None or node.op_type != "Reshape" or len(graph.value_info[node.outputs[0]].shape) != 3:
        return None
    members.append(node)
    members += chain
    b, h, s, d = graph.value_info[pv.outputs[0]].shape
    if d % multiple:
        return None
    q_src, k_src, v_src = q[0], k[0], v[0]
    for src in (q_src, k_src, v_src):
        if tuple(graph.value_info[src].shape) != (b, graph.value_info[src].shape[1], h * d):
            return None
    if len(terms) > 2:
        return None
    fused = Node("Attention", [q_src, k_src, v_src] + [t for t, _ in terms], [node.outputs[0]],
                 {"num_heads": h, "head_size": d, "scale": alpha * q[2] * k[2],
                  "term_signs": [sgn for _, sgn in terms], "nan_to_zero": nan_to_zero},
                 FUSED_DOMAIN, softmax.name + "/attention")
    return fused, members, node


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
