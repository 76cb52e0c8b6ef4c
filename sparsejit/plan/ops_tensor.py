"""Data-movement operators: transposes, slices, concatenation, gathers, scans.

Most are a strided copy between numpy views, done by the generated elementwise copy kernel.
A few rarely-run index ops execute the ONNX reference implementation (`reference_step`); they only
ever see small integer tensors in encoder graphs.
"""

from __future__ import annotations

import numpy as np

from sparsejit.errors import ShapeError, UnsupportedOperatorError
from sparsejit.graph.ir import Node
from sparsejit.graph.reference import evaluate, onnx_slice
from sparsejit.kernels.elementwise import elementwise_step
from sparsejit.kernels.indexing import cumsum, gather
from sparsejit.plan.lowering import LowerContext, Step, lowers


def copy_step(src: np.ndarray, dst: np.ndarray) -> Step:
    """A step copying view `src` into view `dst` (same shape, or one `src` broadcasts to) with the
    generated copy kernel. A `src` that does not broadcast to `dst` is a lowering bug: refused here,
    at compile time, rather than copied out of bounds."""
    try:
        fits = np.broadcast_shapes(src.shape, dst.shape) == dst.shape
    except ValueError:
        fits = False
    if not fits:
        raise ShapeError(f"internal error: cannot copy a {src.shape} view into a {dst.shape} buffer")
    return elementwise_step("{0}", [src], dst)


def sequence(steps: list[Step]) -> Step:
    if len(steps) == 1:
        return steps[0]
    return lambda: [s() for s in steps] and None


def _const_input(node: Node, ctx: LowerContext, index: int, what: str) -> np.ndarray | None:
    if index >= len(node.inputs) or not node.inputs[index]:
        return None
    value = ctx.const(node.inputs[index])
    if value is None:
        raise UnsupportedOperatorError(node.op_type, node.domain, node.name,
                                       f"{what} must be known at compile time")
    return value


@lowers("Transpose")
def _transpose(node: Node, ctx: LowerContext) -> Step:
    x = ctx.operand(node.inputs[0])
    perm = node.attrs.get("perm", list(range(x.ndim))[::-1])
    return copy_step(x.transpose(perm), ctx.array(node.outputs[0]))


@lowers("Expand")
def _expand(node: Node, ctx: LowerContext) -> Step:
    out = ctx.array(node.outputs[0])
    return copy_step(np.broadcast_to(ctx.operand(node.inputs[0]), out.shape), out)


@lowers("Slice")
def _slice(node: Node, ctx: LowerContext) -> Step:
    x = ctx.operand(node.inputs[0])
    if ctx.opset(node) < 10:
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        axes, steps = node.attrs.get("axes"), None
    else:
        starts = _const_input(node, ctx, 1, "Slice starts")
        ends = _const_input(node, ctx, 2, "Slice ends")
        axes = _const_input(node, ctx, 3, "Slice axes")
        steps = _const_input(node, ctx, 4, "Slice steps")
    axes = list(range(len(starts))) if axes is None else [int(a) % x.ndim for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * x.ndim
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        index[axis] = onnx_slice(x.shape[axis], int(start), int(end), int(step))
    return copy_step(x[tuple(index)], ctx.array(node.outputs[0]))


@lowers("Concat")
def _concat(node: Node, ctx: LowerContext) -> Step:
    out = ctx.array(node.outputs[0])
    axis = node.attrs["axis"] % out.ndim
    steps, offset = [], 0
    for name in node.inputs:
        part = ctx.operand(name)
        n = part.shape[axis]
        if n:
            index = (slice(None),) * axis + (slice(offset, offset + n),)
            steps.append(copy_step(part, out[index]))
        offset += n
    return sequence(steps)


@lowers("Split")
def _split(node: Node, ctx: LowerContext) -> Step:
    x = ctx.operand(node.inputs[0])
    axis = node.attrs.get("axis", 0) % x.ndim
    steps, offset = [], 0
    for name in node.outputs:
        n = ctx.shape(name)[axis] if name else 0
        if name:
            index = (slice(None),) * axis + (slice(offset, offset + n),)
            steps.append(copy_step(x[index], ctx.array(name)))
        offset += n
    return sequence(steps)


@lowers("Gather")
def _gather(node: Node, ctx: LowerContext) -> Step:
    data = ctx.operand(node.inputs[0])
    indices = ctx.operand(node.inputs[1])
    out = ctx.array(node.outputs[0])
    axis = node.attrs.get("axis", 0)
    return lambda: gather(data, indices, axis, out)


@lowers("CumSum")
def _cumsum(node: Node, ctx: LowerContext) -> Step:
    x = ctx.operand(node.inputs[0])
    axis = int(_const_input(node, ctx, 1, "CumSum axis"))
    exclusive, reverse = bool(node.attrs.get("exclusive", 0)), bool(node.attrs.get("reverse", 0))
    out = ctx.array(node.outputs[0])
    return lambda: cumsum(x, axis, exclusive, reverse, out)


# Index-heavy ops that encoders only apply to tiny integer tensors: run the ONNX reference.
REFERENCE_OPS = ("GatherElements", "GatherND", "ScatterND", "ScatterElements", "Tile", "Range", "Trilu",
                 "OneHot", "ArgMax", "ArgMin", "TopK", "Pad", "ConstantOfShape", "EyeLike", "Einsum")


@lowers(*REFERENCE_OPS)
def reference_step(node: Node, ctx: LowerContext) -> Step:
    opset = ctx.opset(node)
    inputs = [ctx.operand(name) if name else None for name in node.inputs]
    outputs = [ctx.array(name) if name else None for name in node.outputs]

    def run() -> None:
        for out, value in zip(outputs, evaluate(node, opset, inputs), strict=False):
            if out is not None:
                out[...] = value

    return run
