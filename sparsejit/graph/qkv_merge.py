"""Merge an attention's Q, K and V int8 products into one product (pass `run`).

The three `sparsejit::QMatMul` nodes of a self-attention read the same activation (quantised once
already) and differ only in their weights: one product with the weights side by side ([K, 3w], per
column scales, zero points and biases) does the same arithmetic in one parallel launch, with three
times the column panels to balance over the threads, and leaves Q, K and V in one [.., 3w] tensor
that the fused `sparsejit::Attention` reads in place (`packed_qkv`; inputs [qkv, "", "", terms...]).
Every output element is computed exactly as before: the merged graph's outputs are bit-identical.

The engine says up to how many rows (batch x sequence) merging pays (`PassContext.qkv_merge_max_rows`).
With the AVX-512 VNNI products, measured on BERT-base int8 (Zen 4, 2 threads, whole runs alternating),
merged vs separate: -2 to -6 % at 128 rows, -4 % at 512, +-1 % at 1024, +1 to +2 % at 2048 (both the
product and the attention reading the packed rows got a little slower there). At few rows each product
is short and its launch and last-task imbalance weigh most. With the AMX products merging pays at every
size (-3.5 % at 2048 rows, Sapphire Rapids class).

The concatenated weight is derived once per model (memoised on the Q weight, shared by every bucket).
"""

from __future__ import annotations

import numpy as np

from sparsejit.graph.ir import Graph, Node, Value
from sparsejit.graph.pass_context import PassContext
from sparsejit.graph.rewrite import FUSED_DOMAIN as DOMAIN
from sparsejit.graph.rewrite import Rewriter, Uses, add_constant, derived_constant

NAME = "qkv_merge"
_SAME_ATTRS = ("mode", "a_scale", "a_zero")


def _column_vector(graph: Graph, name: str, n: int, dtype: np.dtype) -> np.ndarray | None:
    """A constant that is a scalar or one value per column, as an [n] vector (None: not such)."""
    if not name:
        return np.zeros(n, dtype)
    value = graph.initializers.get(name)
    if value is None or value.size not in (1, n):
        return None
    return np.broadcast_to(value.reshape(-1).astype(dtype), (n,))


def _parts(graph: Graph, producers: dict[str, Node], uses: Uses, attention: Node,
           max_rows: int | None) -> list[Node] | None:
    """The three QMatMul nodes feeding q, k and v when they can become one product."""
    nodes = [producers.get(name) for name in attention.inputs[:3]]
    if any(n is None or n.op_type != "QMatMul" or n.domain != DOMAIN for n in nodes):
        return None
    if len({id(n) for n in nodes}) != 3:
        return None
    first = nodes[0]
    for node in nodes:
        if (node.inputs[0] != first.inputs[0] or node.attrs.get("activation") is not None
                or node.attrs.get("fake_quant") or (len(node.inputs) > 5 and node.inputs[5])
                or any(node.attrs.get(a) != first.attrs.get(a) for a in _SAME_ATTRS)
                or uses.sole_consumer(node.outputs[0]) is not attention):
            return None
        w = graph.initializers.get(node.inputs[1])
        w0 = graph.initializers.get(first.inputs[1])
        if w is None or w0 is None or w.ndim != 2 or w.dtype != w0.dtype or w.shape != w0.shape:
            return None
        out = graph.value_info.get(node.outputs[0])
        if out is None or out.dtype != np.float32 or not out.is_static or out.shape[-1] != w.shape[1]:
            return None
        if max_rows is not None and int(np.prod(out.shape[:-1])) > max_rows:
            return None
    return nodes


def _merged_constants(graph: Graph, nodes: list[Node]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    weights = [graph.initializers[n.inputs[1]] for n in nodes]
    n = weights[0].shape[1]
    scales, zeros, biases = [], [], []
    for node in nodes:
        inputs = node.inputs + [""] * (6 - len(node.inputs))
        scale = _column_vector(graph, inputs[2], n, np.dtype(np.float32))
        zero = _column_vector(graph, inputs[3], n, weights[0].dtype)
        bias = _column_vector(graph, inputs[4], n, np.dtype(np.float32))
        if scale is None or zero is None or bias is None:
            return None
        scales.append(scale)
        zeros.append(zero)
        biases.append(bias)
    tag = "qkv:" + ",".join(node.inputs[1] for node in nodes)
    w = derived_constant(weights[0], tag, lambda: np.ascontiguousarray(np.concatenate(weights, axis=1)))
    return w, np.concatenate(scales), np.concatenate(zeros), np.concatenate(biases)


def run(graph: Graph, ctx: PassContext) -> Graph:
    """Replace the Q, K, V products of each fused attention by one packed product (module docstring),
    in buckets of at most `ctx.qkv_merge_max_rows` rows (None: every bucket)."""
    max_rows = ctx.qkv_merge_max_rows
    uses = Uses(graph)
    producers = uses.producers
    rewriter = Rewriter(graph)
    for attention in graph.nodes:
        if attention.op_type != "Attention" or attention.domain != DOMAIN or attention.attrs.get("packed_qkv"):
            continue
        nodes = _parts(graph, producers, uses, attention, max_rows)
        if nodes is None or rewriter.is_claimed(attention) or any(rewriter.is_claimed(n) for n in nodes):
            continue
        merged = _merged_constants(graph, nodes)
        if merged is None:
            continue
        w, scale, zero, bias = merged
        base = nodes[0].name or nodes[0].outputs[0]
        names = [add_constant(graph, f"{base}/qkv_{part}", value)
                 for part, value in (("weight", w), ("scale", scale), ("zero", zero), ("bias", bias))]
        out = f"{nodes[0].outputs[0]}/qkv"
        shape = graph.value_info[nodes[0].outputs[0]].shape
        graph.value_info[out] = Value(out, np.dtype(np.float32), (*shape[:-1], w.shape[1]))
        product = Node("QMatMul", [nodes[0].inputs[0], *names, ""], [out],
                       dict(nodes[0].attrs, activation=None), DOMAIN, f"{base}/qkv")
        packed = Node(attention.op_type, [out, "", "", *attention.inputs[3:]], list(attention.outputs),
                      dict(attention.attrs, packed_qkv=True), attention.domain, attention.name)
        first = min(nodes, key=rewriter.position)
        rewriter.replace(nodes, product, at=first)
        rewriter.substitute(attention, packed)
    return rewriter.finish()
