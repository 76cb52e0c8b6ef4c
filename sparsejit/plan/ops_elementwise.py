"""Elementwise operators: each is a scalar expression template compiled into a generated kernel.

Operands arrive as `Operand`s, names of kernel variables: `a{k}` for the element of the k-th run-time
array, `c{k}` for the k-th scalar constant (a kernel argument, its value in `Operand.value`), `t{k}`
for an intermediate of a fused chain. `Div(x, 8.0)` becomes `(a0 / c0)` with `c0 = np.float32(8.0)`
passed at run time, so every layer dividing by its own constant shares one compiled kernel.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sparsejit.graph.ir import Node
from sparsejit.kernels.elementwise import ElementwiseProgram, elementwise_step
from sparsejit.plan.lowering import LowerContext, Step, lowers


class Operand(str):
    """A kernel variable name; `value` is the constant it holds, for a scalar constant (else None)."""

    value: np.generic | None

    def __new__(cls, name: str, value: np.generic | None = None) -> Operand:
        obj = super().__new__(cls, name)
        obj.value = value
        return obj


Expr = Callable[[Node, list[Operand], list[np.dtype], np.dtype], str]


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


def _pow(node, x, dts, out):  # the exponents LayerNorm and GELU spellings use, as the cheap operations
    exponent = getattr(x[1], "value", None)
    if exponent is not None and exponent == 2:
        return f"({x[0]} * {x[0]})"
    if exponent is not None and exponent == 0.5:
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


_SCALAR_ARGUMENT_TYPES = frozenset(_NP_SCALAR) | {np.dtype(np.bool_)}  # passed to kernels as numpy scalars


def _operands(names: list[str], ctx: LowerContext, runtime: list[np.ndarray],
              scalars: list[np.generic]) -> dict[str, Operand]:
    """An operand for each input name: a scalar constant becomes a kernel argument `c{k}` (appended
    to `scalars`), anything else the k-th run-time array `a{k}` (appended to `runtime`; it broadcasts
    to the output shape)."""
    operand: dict[str, Operand] = {}
    for name in names:
        if not name or name in operand:
            continue
        const = ctx.const(name)
        if const is not None and const.size == 1 and const.dtype in _SCALAR_ARGUMENT_TYPES:
            value = np.asarray(const).reshape(()).item()
            scalar = np.asarray(const).dtype.type(value)
            operand[name] = Operand(f"c{len(scalars)}", scalar)
            scalars.append(scalar)
            continue
        operand[name] = Operand(f"a{len(runtime)}")
        runtime.append(ctx.operand(name))  # broadcast to the output by the kernel
    return operand


def node_expression(node: Node, ctx: LowerContext, operand: dict[str, Operand], expr_fn: Expr | None = None) -> str:
    """The scalar expression computing `node`'s output from its operands."""
    expr_fn = expr_fn or ELEMENTWISE[node.op_type]
    inputs = node.inputs[:1] if node.op_type == "CastLike" else node.inputs
    x = [operand[name] if name else Operand("") for name in inputs]
    dtypes = [ctx.dtype(name) if name in ctx.graph.value_info else np.dtype(np.float32) for name in inputs]
    return expr_fn(node, x, dtypes, ctx.dtype(node.outputs[0]))


def lower_elementwise(node: Node, ctx: LowerContext, expr_fn: Expr | None = None) -> Step:
    """Lower an elementwise node (or any node given its expression builder `expr_fn`)."""
    out = ctx.array(node.outputs[0])
    runtime: list[np.ndarray] = []
    scalars: list[np.generic] = []
    inputs = node.inputs[:1] if node.op_type == "CastLike" else node.inputs
    operand = _operands(inputs, ctx, runtime, scalars)
    program = ElementwiseProgram((), node_expression(node, ctx, operand, expr_fn))
    return elementwise_step(program, runtime, out, scalars)


@lowers("FusedElementwise", domain="sparsejit")
def lower_fused_elementwise(node: Node, ctx: LowerContext) -> Step:
    """One generated kernel for a whole chain: each inner result is bound once to a temporary."""
    out = ctx.array(node.outputs[0])
    runtime: list[np.ndarray] = []
    scalars: list[np.generic] = []
    operand = _operands(node.inputs, ctx, runtime, scalars)
    lines = []
    for i, inner in enumerate(node.attrs["nodes"]):
        lines.append(f"t{i} = {node_expression(inner, ctx, operand)}")
        operand[inner.outputs[0]] = Operand(f"t{i}")
    return elementwise_step(ElementwiseProgram(tuple(lines), f"t{len(lines) - 1}"), runtime, out, scalars)


for _op in ELEMENTWISE:
    lowers(_op)(lambda node, ctx: lower_elementwise(node, ctx))
