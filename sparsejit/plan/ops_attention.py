"""Lowering of the fused `sparsejit::Attention` node (see `sparsejit.graph.attention`)."""

from __future__ import annotations

import numpy as np

from sparsejit.graph.ir import Node
from sparsejit.kernels.attention import attention
from sparsejit.plan.lowering import LowerContext, Step, lowers


@lowers("Attention", domain="sparsejit")
def _attention(node: Node, ctx: LowerContext) -> Step:
    q, k, v = (ctx.operand(name) for name in node.inputs[:3])
    out = ctx.array(node.outputs[0])
    heads, d = int(node.attrs["num_heads"]), int(node.attrs["head_size"])
    shape = (q.shape[0], heads, q.shape[1], k.shape[1])
    terms = [np.broadcast_to(ctx.operand(name).astype(np.float32, copy=False), shape) for name in node.inputs[3:]]
    signs = [float(s) for s in node.attrs["term_signs"]] + [0.0, 0.0]
    dummy = np.zeros((1, 1, 1, 1), np.float32)
    while len(terms) < 2:
        terms.append(np.broadcast_to(dummy, shape))
    n_terms = len(node.inputs) - 3
    scale = np.float32(node.attrs["scale"])
    nan_to_zero = bool(node.attrs["nan_to_zero"])
    return lambda: attention(q, k, v, terms[0], terms[1], n_terms, np.float32(signs[0]), np.float32(signs[1]),
                             scale, nan_to_zero, heads, d, out)
