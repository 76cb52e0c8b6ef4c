"""Constant folding and shape specialisation.

`fold_constants` runs once per model and folds subgraphs that depend only on weights, so folded
weights (e.g. transposed matrices) are stored once and shared by every bucket. `specialise` then
fixes the input shapes of one bucket, infers every shape and folds everything that depends only on
shapes (the Shape/Gather/Concat/Range/Expand/Where chains exporters emit), leaving real compute.
"""

from __future__ import annotations

import numpy as np

from sparsejit.errors import ShapeError
from sparsejit.graph.ir import Graph, Node, Value
from sparsejit.graph.op_traits import foldable
from sparsejit.graph.quant_ops import dequantized_source
from sparsejit.graph.reference import evaluate, infer_outputs

# Folding these would materialise large tensors from small ones for no gain.
_NEVER_FOLD_OUTPUT_ELEMENTS = 1 << 24
_GATHERED_TABLE_MIN_ELEMENTS = 1 << 20
#: 8-bit weights at least this large keep their DequantizeLinear until the int8 fusions have run.
DEFERRED_DEQUANTIZE_MIN_ELEMENTS = 1 << 14


def is_deferred_dequantize(node: Node, arrays: list[np.ndarray | None]) -> bool:
    """A DequantizeLinear of a large constant 8-bit weight: not folded at load or per bucket, so its float32
    copy (4x the weight) never exists when an int8 product reads the weight itself (`quant_fusion` folds
    the ones left)."""
    source = dequantized_source(node, arrays)
    return source is not None and source.q.size >= DEFERRED_DEQUANTIZE_MIN_ELEMENTS


def _fold_node(graph: Graph, node: Node, consts: dict[str, np.ndarray], defer_dequantize: bool = True) -> bool:
    arrays = [consts.get(name) if name else None for name in node.inputs]
    if any(name and arr is None for name, arr in zip(node.inputs, arrays, strict=True)):
        return False
    if defer_dequantize and is_deferred_dequantize(node, arrays):
        return False
    results = evaluate(node, graph.opset(node.domain), arrays)
    for name, arr in zip(node.outputs, results, strict=False):
        if name:
            consts[name] = arr
    source = dequantized_source(node, arrays)
    if source is not None:
        graph.int8_sources[node.outputs[0]] = source
    for name, arr in zip(node.outputs, results, strict=False):  # an op passing a dequantised input through
        for src_name, src_arr in zip(node.inputs, arrays, strict=True):
            if name and arr is src_arr and src_name in graph.int8_sources:
                graph.int8_sources[name] = graph.int8_sources[src_name]
    return True


def fold_constants(graph: Graph, defer_dequantize: bool = True) -> Graph:
    """Fold every node whose inputs are all constants (but the DequantizeLinear of large 8-bit weights,
    unless `defer_dequantize` is off). Returns a new graph; weights are shared."""
    out = graph.copy()
    consts = dict(out.initializers)
    consumers = out.consumers()
    tables: dict[str, Node] = {}  # dequantized table -> its DequantizeLinear, moved after each Gather
    kept: list[Node] = []
    for node in out.nodes:
        if _gathered_table(node, consumers, consts):
            tables[node.outputs[0]] = node
        elif node.op_type == "Gather" and not node.domain and node.inputs[0] in tables:
            dq, rows = tables[node.inputs[0]], node.outputs[0] + "/int8_rows"
            kept.append(Node("Gather", [dq.inputs[0], *node.inputs[1:]], [rows], dict(node.attrs), "", node.name))
            kept.append(Node("DequantizeLinear", [rows, *dq.inputs[1:]], list(node.outputs), {}, "",
                             dq.name + "/rows"))
        elif not foldable(node.op_type, node.domain) or not _fold_node(out, node, consts, defer_dequantize):
            kept.append(node)
    out.nodes = kept
    out.initializers = _used_constants(kept, out.outputs, consts)
    return out



def _gathered_table(node: Node, consumers: dict[str, list[Node]], consts: dict[str, np.ndarray]) -> bool:
    """A large int8 table dequantized per tensor only to be read by Gathers (a quantised embedding):
    folded, it would sit in memory at four times its size for the few rows a run reads. Instead each
    Gather reads int8 rows and the dequantization (same scale and zero point) runs on those alone."""
    if node.op_type != "DequantizeLinear" or node.domain:
        return False
    params = [consts.get(name) for name in node.inputs[1:] if name]
    if any(p is None or p.size != 1 for p in params) or node.attrs.get("block_size"):
        return False
    table = consts.get(node.inputs[0])
    readers = consumers.get(node.outputs[0], [])
    return (table is not None and table.size >= _GATHERED_TABLE_MIN_ELEMENTS and bool(readers)
            and all(r.op_type == "Gather" and not r.domain and r.inputs[0] == node.outputs[0]
                    and node.outputs[0] not in r.inputs[1:] for r in readers))


def _used_constants(nodes: list[Node], outputs: list[Value], consts: dict[str, np.ndarray]):
    used = {name for n in nodes for name in n.inputs if name} | {v.name for v in outputs}
    return {name: arr for name, arr in consts.items() if name in used}


def specialise(graph: Graph, input_shapes: dict[str, tuple[int, ...]]) -> Graph:
    """Return a copy of `graph` with static shapes for `input_shapes`, shape-only subgraphs folded.

    Every remaining node has fully static output shapes recorded in `value_info`.
    """
    out = graph.copy()
    values: dict[str, Value] = {}
    for v in out.inputs:
        if v.name not in input_shapes:
            raise ShapeError(f"no shape given for model input {v.name!r}")
        shape = tuple(int(d) for d in input_shapes[v.name])
        if v.shape is not None:
            if len(v.shape) != len(shape):
                raise ShapeError(f"input {v.name!r} has rank {len(v.shape)} in the model, got shape {shape}")
            for want, got in zip(v.shape, shape, strict=True):
                if isinstance(want, int) and want != got:
                    raise ShapeError(f"input {v.name!r} has fixed shape {v.shape} in the model; got {shape}")
        v.shape = shape
        values[v.name] = v
    consts = dict(out.initializers)
    for name, arr in consts.items():
        values[name] = Value(name, arr.dtype, tuple(arr.shape))

    kept: list[Node] = []
    for node in out.nodes:
        if node.op_type == "Dropout":
            node = _dropout_to_identity(node)
        if _fold_shape_query(node, values, consts):
            continue
        if foldable(node.op_type, node.domain) and _fold_node(out, node, consts):
            for name in node.outputs:
                if name:
                    values[name] = Value(name, consts[name].dtype, tuple(consts[name].shape))
            continue
        inputs = [values.get(name) if name else None for name in node.inputs]
        missing = [name for name, v in zip(node.inputs, inputs, strict=True) if name and v is None]
        if missing:
            raise ShapeError(f"node {node.name!r} reads unknown values {missing}")
        inferred = infer_outputs(node, out.opset(node.domain), inputs,
                                 [consts.get(name) if name else None for name in node.inputs])
        for v in inferred:
            values[v.name] = v
        kept.append(node)

    for v in out.outputs:
        if v.name not in values:
            raise ShapeError(f"graph output {v.name!r} is never produced")
        v.shape, v.dtype = values[v.name].shape, values[v.name].dtype
    out.nodes = kept
    out.initializers = _used_constants(kept, out.outputs, consts)
    out.value_info = values
    return out


def _dropout_to_identity(node: Node) -> Node:
    # Inference graphs: Dropout is identity (its mask output, if used, is all true).
    if len(node.outputs) > 1 and node.outputs[1]:
        return node
    return Node("Identity", node.inputs[:1], node.outputs[:1], {}, "", node.name)


def _fold_shape_query(node: Node, values: dict[str, Value], consts: dict[str, np.ndarray]) -> bool:
    """Shape/Size of a value with a static shape are constants even when the value is not."""
    if node.domain or node.op_type not in ("Shape", "Size"):
        return False
    src = values.get(node.inputs[0])
    if src is None or not src.is_static:
        return False
    if node.op_type == "Size":
        result = np.array(int(np.prod(src.shape)), dtype=np.int64)
    else:
        rank = len(src.shape)
        start = node.attrs.get("start", 0)
        end = node.attrs.get("end", rank)
        start = max(0, min(rank, start + rank if start < 0 else start))
        end = max(0, min(rank, end + rank if end < 0 else end))
        result = np.array(src.shape[start:end], dtype=np.int64)
    consts[node.outputs[0]] = result
    values[node.outputs[0]] = Value(node.outputs[0], result.dtype, tuple(result.shape))
    return True
