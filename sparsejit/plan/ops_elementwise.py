"""Elementwise operators: each is a scalar expression template compiled into a generated kernel.

Operands arrive as strings: `{i}` for the i-th run-time input or a literal for a scalar constant,
so `Div(x, 8.0)` becomes the kernel expression `({0} / np.float32(8.0))`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sparsejit.graph.ir import Node
from sparsejit.kernels.elementwise import elementwise_step
from sparsejit.plan.lowering import LowerContext, Step, lowers

Expr = Callable[[Node, list[str], list[np.dtype], np.dtype], str]


def _is_int(dt: np.dtype) -> bool:
    return np.issubdtype(dt, np.integer)


def _binary(symbol: str) -> Expr:
    return lambda node, x, dts, out: f"({x[0]} {symbol} {x[1]})"


def _call(fn: str) -> Expr:
    return lambda node, x, dts, out: f"{fn}({x[0]})"


def _erf(node, x, dts, out):  # float32: a rational form LLVM vectorises (libm's erff is a scalar call)
    return f"_erf32({x[0]})" if dts[0] == np.float32 else f"math.erf({x[0]})"


def _div(node, x, dts, out):
    return f"_idiv({x[0]}, {x[1]})" if _is_int(dts[0]) else f"({x[0]} / {x[1]})"


def _pow(node, x, dts, out):
    if x[1] in ("np.float32(2.0)", "np.float64(2.0)", "np.int64(2)", "np.int32(2)"):
        return f"({x[0]} * {x[0]})"
    if x[1] in ("np.float32(0.5)", "np.float64(0.5)"):
        return f"math.sqrt({x[0]})"
    return f"({x[0]} ** {x[1]})"


def _fold(fn: str) -> Expr:
    def expr(node, x, dts, out):
        acc = x[0]
        for term in x[1:]:
            acc = f"{fn}({acc}, {term})"
        return acc

    return expr


def _sum(node, x, dts, out):
    return "(" + " + ".join(x) + ")"


def _mean(node, x, dts, out):
    return f"({' + '.join(x)}) / {len(x)}"


def _cast(node, x, dts, out):
    if out == np.bool_:
        return f"({x[0]} != 0)"
    ctor = _NP_SCALAR.get(np.dtype(out))
    return f"{ctor}({x[0]})" if ctor else x[0]


def _clip(node, x, dts, out):
    v = x[0]
    lo = x[1] if len(x) > 1 and x[1] else node.attrs.get("min")
    hi = x[2] if len(x) > 2 and x[2] else node.attrs.get("max")
    if lo is not None:
        v = f"_max({v}, {lo})"
    if hi is not None:
        v = f"_min({v}, {hi})"
    return v


def _gelu(node, x, dts, out):
    a = x[0]
    if node.attrs.get("approximate", "none") == "tanh":
        return f"(0.5 * {a} * (1.0 + math.tanh(0.7978845608028654 * ({a} + 0.044715 * {a} * {a} * {a}))))"
    return f"(0.5 * {a} * (1.0 + math.erf({a} * 0.7071067811865476)))"


def _isinf(node, x, dts, out):
    neg, pos = node.attrs.get("detect_negative", 1), node.attrs.get("detect_positive", 1)
    a = x[0]
    if neg and pos:
        return f"math.isinf({a})"
    if pos:
        return f"({a} == np.inf)"
    return f"({a} == -np.inf)" if neg else "False"


def _mod(node, x, dts, out):
    if node.attrs.get("fmod", 0):
        return f"_ifmod({x[0]}, {x[1]})" if _is_int(dts[0]) else f"np.fmod({x[0]}, {x[1]})"
    return f"({x[0]} % {x[1]})"


def _attr(name: str, default: float, template: str) -> Expr:
    return lambda node, x, dts, out: template.format(a=x[0], k=float(node.attrs.get(name, default)))


ELEMENTWISE: dict[str, Expr] = {
    "Add": _binary("+"), "Sub": _binary("-"), "Mul": _binary("*"), "Div": _div, "Pow": _pow,
    "Equal": _binary("=="), "Less": _binary("<"), "Greater": _binary(">"),
    "LessOrEqual": _binary("<="), "GreaterOrEqual": _binary(">="),
    "And": _binary("and"), "Or": _binary("or"), "Xor": _binary("!="),
    "BitwiseAnd": _binary("&"), "BitwiseOr": _binary("|"), "BitwiseXor": _binary("^"),
    "Mod": _mod, "Max": _fold("_max"), "Min": _fold("_min"), "Sum": _sum, "Mean": _mean,
    "Where": lambda node, x, dts, out: f"({x[1]} if {x[0]} else {x[2]})",
    "Erf": _erf, "Tanh": _call("math.tanh"), "Sqrt": _call("math.sqrt"),
    "Exp": _call("math.exp"), "Log": _call("math.log"), "Sin": _call("math.sin"), "Cos": _call("math.cos"),
    "Abs": _call("abs"), "Floor": _call("np.floor"), "Ceil": _call("np.ceil"), "Sign": _call("np.sign"),
    "Round": _call("np.round"),
    "Neg": lambda node, x, dts, out: f"(-{x[0]})",
    "Reciprocal": lambda node, x, dts, out: f"(1.0 / {x[0]})",
    "Not": lambda node, x, dts, out: f"(not {x[0]})",
    "BitwiseNot": lambda node, x, dts, out: f"(~{x[0]})",
    "IsNaN": lambda node, x, dts, out: f"({x[0]} != {x[0]})",
    "IsInf": _isinf,
    "Relu": lambda node, x, dts, out: f"({x[0]} if {x[0]} > 0 else 0)",
    "Sigmoid": lambda node, x, dts, out: f"(1.0 / (1.0 + math.exp(-{x[0]})))",
    "Softplus": _call("_softplus"),
    "LeakyRelu": _attr("alpha", 0.01, "({a} if {a} >= 0 else {k!r} * {a})"),
    "Elu": _attr("alpha", 1.0, "({a} if {a} >= 0 else {k!r} * (math.exp({a}) - 1.0))"),
    "HardSigmoid": lambda node, x, dts, out: (
        f"_max(0.0, _min(1.0, {float(node.attrs.get('alpha', 0.2))!r} * {x[0]}"
        f" + {float(node.attrs.get('beta', 0.5))!r}))"),
    "PRelu": lambda node, x, dts, out: f"({x[0]} if {x[0]} >= 0 else {x[0]} * {x[1]})",
    "Gelu": _gelu, "Cast": _cast, "CastLike": _cast, "Clip": _clip,
}

_NP_SCALAR = {np.dtype(np.float32): "np.float32", np.dtype(np.float64): "np.float64",
              np.dtype(np.int64): "np.int64", np.dtype(np.int32): "np.int32", np.dtype(np.int8): "np.int8",
              np.dtype(np.uint8): "np.uint8", np.dtype(np.int16): "np.int16"}


def scalar_literal(value: np.ndarray) -> str | None:
    """Source text for a scalar constant, or None if it cannot be inlined."""
    value = np.asarray(value)
    if value.size != 1:
        return None
    item = value.reshape(()).item()
    if value.dtype == np.bool_:
        return repr(bool(item))
    ctor = _NP_SCALAR.get(value.dtype)
    if ctor is None:
        return None
    if isinstance(item, float) and not np.isfinite(item):
        return f"{ctor}({'np.nan' if np.isnan(item) else ('np.inf' if item > 0 else '-np.inf')})"
    return f"{ctor}({item!r})"


def _operands(names: list[str], ctx: LowerContext, out: np.ndarray,
              runtime: list[np.ndarray]) -> dict[str, str]:
    """Operand text for each input name: an inlined scalar literal or `{k}`, the k-th run-time array
    (appended to `runtime`; it broadcasts to the output shape)."""
    text: dict[str, str] = {}
    for name in names:
        if not name or name in text:
            continue
        const = ctx.const(name)
        literal = scalar_literal(const) if const is not None else None
        if literal is not None:
            text[name] = literal
            continue
        text[name] = "{" + str(len(runtime)) + "}"
        runtime.append(ctx.operand(name))  # broadcast to `out` by the kernel
    return text


def node_expression(node: Node, ctx: LowerContext, operand: dict[str, str], expr_fn: Expr | None = None) -> str:
    """The scalar expression computing `node`'s output from its operands' expressions."""
    expr_fn = expr_fn or ELEMENTWISE[node.op_type]
    inputs = node.inputs[:1] if node.op_type == "CastLike" else node.inputs
    x = [operand[name] if name else "" for name in inputs]
    dtypes = [ctx.dtype(name) if name in ctx.graph.value_info else np.dtype(np.float32) for name in inputs]
    return expr_fn(node, x, dtypes, ctx.dtype(node.outputs[0]))


def _kernel_step(expr: str, runtime: list[np.ndarray], out: np.ndarray) -> Step:
    return elementwise_step(expr, runtime, out)


def lower_elementwise(node: Node, ctx: LowerContext, expr_fn: Expr | None = None) -> Step:
    """Lower an elementwise node (or any node given its expression builder `expr_fn`)."""
    out = ctx.array(node.outputs[0])
    runtime: list[np.ndarray] = []
    inputs = node.inputs[:1] if node.op_type == "CastLike" else node.inputs
    operand = _operands(inputs, ctx, out, runtime)
    return _kernel_step(node_expression(node, ctx, operand, expr_fn), runtime, out)


@lowers("FusedElementwise", domain="sparsejit")
def lower_fused_elementwise(node: Node, ctx: LowerContext) -> Step:
    """One generated kernel for a whole chain: inner results are inlined as sub-expressions."""
    out = ctx.array(node.outputs[0])
    runtime: list[np.ndarray] = []
    operand = _operands(node.inputs, ctx, out, runtime)
    expr = ""
    for inner in node.attrs["nodes"]:
        expr = node_expression(inner, ctx, operand)
        operand[inner.outputs[0]] = f"({expr})"
    return _kernel_step(expr, runtime, out)


for _op in ELEMENTWISE:
    lowers(_op)(lambda node, ctx: lower_elementwise(node, ctx))
