"""Compute operators: matrix products, softmax, layer normalisation, reductions."""

from __future__ import annotations

import numpy as np

from sparsejit.errors import UnsupportedOperatorError
from sparsejit.graph.ir import Node
from sparsejit.kernels import reduce as rk
from sparsejit.kernels.gemm import matmul as simd_matmul
from sparsejit.kernels.matmul import matmul
from sparsejit.kernels.normalization import layer_norm_rows, layer_norm_rows_f32, softmax
from sparsejit.plan.kernel_choice import choose_matmul_kernel
from sparsejit.plan.lowering import LowerContext, Step, lowers
from sparsejit.plan.ops_elementwise import lower_elementwise
from sparsejit.plan.ops_tensor import sequence


def _is_f32(*arrays: np.ndarray) -> bool:
    return all(a.dtype == np.float32 for a in arrays)


@lowers("MatMul")
def _matmul(node: Node, ctx: LowerContext) -> Step:
    a = ctx.operand(node.inputs[0])
    b = ctx.operand(node.inputs[1])
    out = ctx.array(node.outputs[0])
    b_name = node.inputs[1]
    if ctx.const(b_name) is not None and b.ndim == 2 and a.ndim >= 2 and _is_f32(a, b, out):
        kernel = choose_matmul_kernel(b, int(np.prod(a.shape[:-1])), None, shared=ctx.shared, key=b_name,
                                      precision=ctx.precision)
        return lambda: kernel(a, out)
    if a.ndim >= 2 and b.ndim == a.ndim and a.shape[:-2] == b.shape[:-2] and _is_f32(a, b, out):
        return lambda: simd_matmul(a, b, out)
    return lambda: matmul(a, b, out)


@lowers("FusedMatMul", domain="sparsejit")
def _fused_matmul(node: Node, ctx: LowerContext) -> Step:
    """out = activation(A @ W + bias) + residual in one GEMM with a fused epilogue."""
    a = ctx.operand(node.inputs[0])
    w_name = node.inputs[1]
    w = ctx.operand(w_name)
    bias = ctx.operand(node.inputs[2]) if node.inputs[2] else None
    residual = ctx.operand(node.inputs[3]) if node.inputs[3] else None
    activation = node.attrs.get("activation")
    out = ctx.array(node.outputs[0])
    kernel = choose_matmul_kernel(w, int(np.prod(a.shape[:-1])), activation, shared=ctx.shared, key=w_name,
                                  precision=ctx.precision)
    bind = getattr(kernel, "bind", None)  # kernels that can fix their operands once do so
    return bind(a, out, bias, residual) if bind is not None else lambda: kernel(a, out, bias, residual)


@lowers("Gemm")
def _gemm(node: Node, ctx: LowerContext) -> Step:
    """Y = alpha * A' @ B' + beta * C; a constant B is transposed and scaled once, at load."""
    alpha = float(node.attrs.get("alpha", 1.0))
    beta = float(node.attrs.get("beta", 1.0))
    trans_a, trans_b = bool(node.attrs.get("transA", 0)), bool(node.attrs.get("transB", 0))
    a = ctx.operand(node.inputs[0])
    a = a.T if trans_a else a
    b_name = node.inputs[1]
    b_const = ctx.const(b_name)
    if b_const is not None:
        b = ctx.shared(("gemm_b", b_name, trans_b, alpha), lambda: np.ascontiguousarray(
            (b_const.T if trans_b else b_const) * np.asarray(alpha, b_const.dtype)))
        alpha = 1.0
    else:
        b = ctx.array(b_name).T if trans_b else ctx.array(b_name)
    out = ctx.array(node.outputs[0])
    a_c = np.ascontiguousarray(a) if a.flags.c_contiguous or ctx.const(node.inputs[0]) is not None else None

    def product() -> None:
        matmul(a_c if a_c is not None else np.ascontiguousarray(a), b, out)

    steps = [product]
    has_c = len(node.inputs) > 2 and bool(node.inputs[2])
    if has_c or alpha != 1.0:
        inputs = [node.outputs[0]] + ([node.inputs[2]] if has_c else [])
        epilogue = Node("Gemm", inputs, [node.outputs[0]], {"alpha": alpha, "beta": beta}, "",
                        node.name + "/epilogue")
        steps.append(lower_elementwise(epilogue, ctx, _gemm_epilogue))
    return sequence(steps)


def _gemm_epilogue(node: Node, x: list[str], dtypes, out) -> str:
    alpha, beta = node.attrs["alpha"], node.attrs["beta"]
    expr = x[0] if alpha == 1.0 else f"({x[0]} * {alpha!r})"
    if len(x) > 1:
        expr = f"({expr} + {x[1]})" if beta == 1.0 else f"({expr} + {x[1]} * {beta!r})"
    return expr


@lowers("Softmax", "LogSoftmax")
def _softmax(node: Node, ctx: LowerContext) -> Step:
    x = ctx.operand(node.inputs[0])
    out = ctx.array(node.outputs[0])
    log = node.op_type == "LogSoftmax"
    if ctx.opset(node) < 13:  # old semantics: flatten to 2-D at `axis`, normalise each row
        axis = node.attrs.get("axis", 1) % max(x.ndim, 1)
        rows = int(np.prod(x.shape[:axis]))
        x2, o2 = x.reshape(rows, -1), out.reshape(rows, -1)
        return lambda: softmax(x2, o2, -1, log)
    axis = node.attrs.get("axis", -1)
    return lambda: softmax(x, out, axis, log)


@lowers("LayerNormalization")
def _layer_norm(node: Node, ctx: LowerContext) -> Step:
    x = ctx.operand(node.inputs[0])
    if any(name for name in node.outputs[1:]):
        raise UnsupportedOperatorError(node.op_type, node.domain, node.name,
                                       "the Mean/InvStdDev outputs are not produced")
    axis = node.attrs.get("axis", -1) % x.ndim
    eps = float(node.attrs.get("epsilon", 1e-5))
    n = int(np.prod(x.shape[axis:]))
    rows = int(np.prod(x.shape[:axis]))
    scale = np.ascontiguousarray(np.broadcast_to(ctx.operand(node.inputs[1]), x.shape[axis:])).reshape(n)
    if len(node.inputs) > 2 and node.inputs[2]:
        bias = np.ascontiguousarray(np.broadcast_to(ctx.operand(node.inputs[2]), x.shape[axis:])).reshape(n)
    else:
        bias = np.zeros(n, dtype=x.dtype)
    x2 = x.reshape(rows, n)
    out2 = ctx.array(node.outputs[0]).reshape(rows, n)
    if ctx.const(node.inputs[1]) is None or (len(node.inputs) > 2 and node.inputs[2]
                                             and ctx.const(node.inputs[2]) is None):
        src_scale, src_bias = ctx.operand(node.inputs[1]), ctx.operand(node.inputs[2])

        def run() -> None:
            layer_norm_rows(x2, np.broadcast_to(src_scale, x.shape[axis:]).reshape(n),
                            np.broadcast_to(src_bias, x.shape[axis:]).reshape(n), eps, out2)

        return run
    if x.dtype == np.float32 and out2.dtype == np.float32:
        scale = np.ascontiguousarray(scale, dtype=np.float32)
        bias = np.ascontiguousarray(bias, dtype=np.float32)
        return lambda: layer_norm_rows_f32(x2, scale, bias, eps, out2)
    return lambda: layer_norm_rows(x2, scale, bias, eps, out2)


_REDUCE_KIND = {"ReduceSum": rk.SUM, "ReduceMean": rk.MEAN, "ReduceMax": rk.MAX, "ReduceMin": rk.MIN,
                "ReduceProd": rk.PROD, "ReduceSumSquare": rk.SUM_SQUARE, "ReduceL2": rk.L2,
                "ReduceL1": rk.L1, "ReduceLogSumExp": rk.LOG_SUM_EXP}
# Opset from which each reduction takes `axes` as an input instead of an attribute.
_AXES_AS_INPUT = {"ReduceSum": 13}


@lowers(*_REDUCE_KIND)
def _reduce(node: Node, ctx: LowerContext) -> Step:
    x = ctx.operand(node.inputs[0])
    out = ctx.array(node.outputs[0])
    if ctx.opset(node) >= _AXES_AS_INPUT.get(node.op_type, 18):
        axes_value = None
        if len(node.inputs) > 1 and node.inputs[1]:
            axes_value = ctx.const(node.inputs[1])
            if axes_value is None:
                raise UnsupportedOperatorError(node.op_type, node.domain, node.name,
                                               "axes must be known at compile time")
        axes = tuple(int(a) for a in axes_value.reshape(-1)) if axes_value is not None else ()
    else:
        axes = tuple(node.attrs.get("axes", ()))
    if not axes and node.attrs.get("noop_with_empty_axes", 0):
        from sparsejit.plan.ops_tensor import copy_step

        return copy_step(x, out)
    kind = _REDUCE_KIND[node.op_type]
    return lambda: rk.reduce(x, axes, kind, out)
