"""Per-node reference semantics borrowed from the `onnx` package itself.

Constant folding evaluates nodes with `onnx.reference` operator implementations and infers output
types with ONNX's own per-node shape inference, so sparsejit's folding agrees with the standard by
construction. Operators of other domains register their own rules in `CUSTOM_OPS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import onnx
from onnx import helper, numpy_helper

from sparsejit.errors import ShapeError, UnsupportedOperatorError
from sparsejit.graph.ir import Node, Value


@dataclass(frozen=True)
class CustomOp:
    """Shape and (optional) evaluation rules for an operator outside the ai.onnx domain."""

    infer: Callable[[Node, list[Value | None], list[np.ndarray | None]], list[Value]]
    evaluate: Callable[[Node, list[np.ndarray | None]], list[np.ndarray]] | None = None


CUSTOM_OPS: dict[tuple[str, str], CustomOp] = {}


def register_custom_op(domain: str, op_type: str, rule: CustomOp) -> None:
    CUSTOM_OPS[(domain, op_type)] = rule


def _to_node_proto(node: Node) -> onnx.NodeProto:
    attrs = {}
    for key, value in node.attrs.items():
        if isinstance(value, onnx.AttributeProto):
            raise UnsupportedOperatorError(node.op_type, node.domain, node.name, "subgraph attributes")
        attrs[key] = numpy_helper.from_array(value) if isinstance(value, np.ndarray) else value
    return helper.make_node(node.op_type, node.inputs, node.outputs, name=node.name, domain=node.domain,
                            **attrs)


@cache
def _schema(op_type: str, domain: str, opset: int) -> onnx.defs.OpSchema:
    return onnx.defs.get_schema(op_type, opset, domain)


def schema_or_raise(node: Node, opset: int) -> onnx.defs.OpSchema:
    try:
        return _schema(node.op_type, node.domain, opset)
    except Exception as exc:
        raise UnsupportedOperatorError(node.op_type, node.domain, node.name,
                                       f"no operator schema at opset {opset}") from exc


def infer_outputs(node: Node, opset: int, inputs: list[Value | None],
                  constants: list[np.ndarray | None]) -> list[Value]:
    """Infer output dtypes and static shapes of `node` from its inputs (and constant inputs' data)."""
    custom = CUSTOM_OPS.get((node.domain, node.op_type))
    if custom is not None:
        return custom.infer(node, inputs, constants)
    schema = schema_or_raise(node, opset)
    types = {}
    data = {}
    for name, value, const in zip(node.inputs, inputs, constants, strict=True):
        if not name or value is None:
            continue
        types[name] = helper.make_tensor_type_proto(
            helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape))
        if const is not None and const.size <= 1 << 16:
            data[name] = numpy_helper.from_array(np.asarray(const), name)
    try:
        result = onnx.shape_inference.infer_node_outputs(schema, _to_node_proto(node), types, data)
    except Exception as exc:
        raise ShapeError(f"shape inference failed at node {node.name!r} ({node.op_type}): {exc}") from exc
    outputs = []
    for name in node.outputs:
        if not name:
            continue
        if name not in result:
            raise ShapeError(f"could not infer the type of output {name!r} of node {node.name!r} "
                             f"({node.op_type})")
        ttype = result[name].tensor_type
        dims = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in ttype.shape.dim)
        if not ttype.HasField("shape") or any(d is None for d in dims):
            raise ShapeError(f"output {name!r} of node {node.name!r} ({node.op_type}) has no static "
                             f"shape for this input shape (got {dims})")
        outputs.append(Value(name, np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type)), dims))
    return outputs


_RUN_PARAMS = {"log": lambda *a: None, "opsets": {}, "verbose": 0, "new_ops": None,
               "existing_functions": {}, "evaluator_cls": None}


def _gather_elements(node: Node, arrays: list[np.ndarray | None]) -> list[np.ndarray]:
    data, index = arrays[0], arrays[1]
    axis = node.attrs.get("axis", 0) % data.ndim
    index = np.where(index < 0, index + data.shape[axis], index)
    return [np.take_along_axis(data, index, axis=axis)]


def onnx_slice(n: int, start: int, end: int, step: int) -> slice:
    """The Python slice selecting what ONNX Slice selects along an axis of size `n`.

    ONNX clamps differently from Python for negative steps: a start before the beginning is clamped
    to index 0 (Python makes the slice empty) and an end of -1 after clamping means "past index 0"."""
    if step == 0:
        raise ValueError("Slice step must not be 0")
    if n == 0:
        return slice(0, 0, step)
    start = start + n if start < 0 else start
    end = end + n if end < 0 else end
    if step > 0:
        return slice(min(max(start, 0), n), min(max(end, 0), n), step)
    start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
    return slice(start, end if end >= 0 else None, step)



def _slice(node: Node, arrays: list[np.ndarray | None]) -> list[np.ndarray]:
    data = arrays[0]
    if len(arrays) > 1:  # opset >= 10: starts, ends, axes, steps as inputs
        starts, ends = arrays[1], arrays[2]
        axes = arrays[3] if len(arrays) > 3 else None
        steps = arrays[4] if len(arrays) > 4 else None
    else:
        starts, ends, axes, steps = node.attrs["starts"], node.attrs["ends"], node.attrs.get("axes"), None
    axes = list(range(len(starts))) if axes is None else [int(a) % data.ndim for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * data.ndim
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        index[axis] = onnx_slice(data.shape[axis], int(start), int(end), int(step))
    return [np.ascontiguousarray(data[tuple(index)])]


# ai.onnx ops whose `onnx.reference` implementation fails on shapes real exports produce, or computes
# differently from the standard (and onnxruntime).
EVAL_OVERRIDES: dict[str, Callable[[Node, list[np.ndarray | None]], list[np.ndarray]]] = {
    "GatherElements": _gather_elements,  # np.choose-based: breaks beyond 64 rows
    "Slice": _slice,  # numpy's clamping for negative steps (a start before the beginning: empty)
}


def evaluate(node: Node, opset: int, arrays: list[np.ndarray | None]) -> list[np.ndarray]:
    """Evaluate `node` on constant inputs with the ONNX reference implementation."""
    if not node.domain and node.op_type in EVAL_OVERRIDES:
        return EVAL_OVERRIDES[node.op_type](node, arrays)
    custom = CUSTOM_OPS.get((node.domain, node.op_type))
    if custom is not None:
        if custom.evaluate is None:
            raise UnsupportedOperatorError(node.op_type, node.domain, node.name, "cannot be constant-folded")
        return custom.evaluate(node, arrays)
    from onnx.reference.ops import load_op

    schema_or_raise(node, opset)
    try:
        cls = load_op(node.domain, node.op_type, opset)
    except Exception as exc:
        raise UnsupportedOperatorError(node.op_type, node.domain, node.name,
                                       "no reference implementation to fold it") from exc
    op = cls(_to_node_proto(node), dict(_RUN_PARAMS, opsets={node.domain: opset}))
    results = op.run(*arrays)
    if not isinstance(results, tuple | list):
        results = (results,)
    return [np.asarray(r) for r in results]
