"""Lowerings of quantised operators.

- `sparsejit::QMatMul` (made by `graph.quant_fusion`): float32 activations quantised on the fly
  (static scale/zero point from a QDQ pair, or per-tensor dynamic like DynamicQuantizeLinear), an
  int8 VNNI GEMM on the constant 8-bit weight, dequantise + bias + activation + residual fused in
  its epilogue. Activations shared by several QMatMuls (Q, K, V) are quantised once.
- ai.onnx `QuantizeLinear`, `DequantizeLinear` (generated elementwise kernels, per-tensor or
  per-axis), `DynamicQuantizeLinear` (vectorised min/max + quantiser), `QLinearMatMul` (VNNI GEMM
  with requantised 8-bit output for constant weights; exact float32 SIMD products, in K chunks of at
  most 258, for two activations),
  `MatMulInteger` (exact float64 BLAS; the fused QMatMul is the fast path).
- com.microsoft `MatMulNBits` (4-bit block weights dequantised to float32 once at load and run by
  the fp32 GEMM, matching onnxruntime's default accuracy level), `QLinearAdd`, `QLinearMul`
  (elementwise kernels), `QLinearSoftmax` (dequantise, softmax, requantise).
"""

from __future__ import annotations

import numpy as np

from sparsejit.errors import UnsupportedOperatorError
from sparsejit.graph import quant_ops  # noqa: F401  (registers the quantisation op rules)
from sparsejit.graph.ir import Node
from sparsejit.graph.quant_ops import MS_DOMAIN, axis_shape, matmulnbits_weight, qgemm_reference
from sparsejit.kernels.elementwise import elementwise_step
from sparsejit.kernels.gemm import gemm, pack_b
from sparsejit.kernels.gemm import matmul as simd_matmul
from sparsejit.kernels.gemm_int8 import (
    bind_epilogue_vectors,
    bind_qgemm,
    convert_rows,
    dynamic_quantize_rows,
    epilogue_vectors,
    pack_b_int8,
    pad_columns,
    qgemm,
    quantize_rows,
)
from sparsejit.kernels.normalization import softmax
from sparsejit.kernels.quantize import accumulate, centre, requantize
from sparsejit.kernels.simd_int8 import fake_quant_params
from sparsejit.plan.lowering import LowerContext, Step, lowers
from sparsejit.plan.ops_elementwise import ELEMENTWISE
from sparsejit.plan.qkernel_choice import QWeightKernels

_QRANGE = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}
_EXACT_F32_K = (2 ** 24 - 1) // (255 * 255)  # 258: the longest K whose 8-bit products sum exactly in float32
_CTOR = {np.dtype(np.uint8): "np.uint8", np.dtype(np.int8): "np.int8"}


# ----------------------------------------------------------------------------------------------
# elementwise helpers


class _Operands:
    """Run-time operands of a generated elementwise kernel (any shapes that broadcast to the output).

    Scales and zero points are passed as (size-1) arrays rather than inlined as literals, so
    every Q/DQ node of a model shares one compiled kernel per expression shape.
    """

    def __init__(self, out: np.ndarray) -> None:
        self.out = out
        self.arrays: list[np.ndarray] = []

    def add(self, arr: np.ndarray, as_float: bool = False) -> str:
        self.arrays.append(np.asarray(arr))  # a view of a run-time buffer stays a view: its values change
        text = "{" + str(len(self.arrays) - 1) + "}"
        return f"np.float32({text})" if as_float else text

    def step(self, expr: str) -> Step:
        return elementwise_step(expr, self.arrays, self.out)


def _param(ctx: LowerContext, node: Node, index: int, ndim: int = 0, axis: int = 0) -> np.ndarray:
    """A scale or zero point input (0 when omitted) reshaped to broadcast along `axis`."""
    name = node.inputs[index] if len(node.inputs) > index else ""
    if not name:
        return np.zeros((), dtype=np.float32)
    return axis_shape(ctx.operand(name), ndim, axis)


def _const_scalar(ctx: LowerContext, node: Node, index: int) -> np.float32 | None:
    """A constant scalar scale or zero point input as float32 (0 when omitted), None if not constant."""
    name = node.inputs[index] if len(node.inputs) > index else ""
    if not name:
        return np.float32(0.0)
    value = ctx.const(name)
    return np.float32(np.asarray(value).reshape(())) if value is not None and value.size == 1 else None


def _quant_expr(value: str, scale: str, zero: str, dtype: np.dtype) -> str:
    """saturate(rint(value / scale) + zero) the way MLAS computes it (the kernel helper `_quantize`)."""
    lo, hi = _QRANGE[np.dtype(dtype)]
    return f"{_CTOR[np.dtype(dtype)]}(_quantize({value}, {scale}, {zero}, np.float32({lo}), np.float32({hi})))"


def _out_qdtype(node: Node, ctx: LowerContext) -> np.dtype:
    dtype = ctx.dtype(node.outputs[0])
    if dtype not in _QRANGE:
        raise UnsupportedOperatorError(node.op_type, node.domain, node.name, f"{dtype} output")
    return dtype


# ----------------------------------------------------------------------------------------------
# QuantizeLinear / DequantizeLinear


def _quantize_expression(node: Node, x: list[str], dtypes: list[np.dtype], out: np.dtype) -> str:
    """QuantizeLinear of operand texts [x, scale, zero point | ""]: the standalone lowering below and,
    per tensor, inside a fused elementwise chain."""
    zero = f"np.float32({x[2]})" if len(x) > 2 and x[2] else "np.float32(0.0)"
    return _quant_expr(f"np.float32({x[0]})", f"np.float32({x[1]})", zero, out)


def _dequantize_expression(node: Node, x: list[str], dtypes: list[np.dtype], out: np.dtype) -> str:
    zero = f"np.float32({x[2]})" if len(x) > 2 and x[2] else "np.float32(0.0)"
    return f"((np.float32({x[0]}) - {zero}) * np.float32({x[1]}))"


# what `graph.elementwise_chains` lets join chains (`joins_chains`): one expression for the fused
# and the standalone forms, so a fused Q -> DQ pair gives the same bits
ELEMENTWISE["QuantizeLinear"] = _quantize_expression
ELEMENTWISE["DequantizeLinear"] = _dequantize_expression


@lowers("DequantizeLinear")
def _dequantize_linear(node: Node, ctx: LowerContext) -> Step:
    x = ctx.operand(node.inputs[0])
    out = ctx.array(node.outputs[0])
    if node.attrs.get("block_size", 0):
        raise UnsupportedOperatorError(node.op_type, node.domain, node.name, "blocked quantisation")
    axis = int(node.attrs.get("axis", 1))
    ops = _Operands(out)
    operands = [ops.add(x), ops.add(_param(ctx, node, 1, x.ndim, axis)), ops.add(_param(ctx, node, 2, x.ndim, axis))]
    return ops.step(_dequantize_expression(node, operands, [], out.dtype))


@lowers("QuantizeLinear")
def _quantize_linear(node: Node, ctx: LowerContext) -> Step:
    x = ctx.operand(node.inputs[0])
    out = ctx.array(node.outputs[0])
    if node.attrs.get("block_size", 0):
        raise UnsupportedOperatorError(node.op_type, node.domain, node.name, "blocked quantisation")
    dtype = _out_qdtype(node, ctx)
    axis = int(node.attrs.get("axis", 1))
    ops = _Operands(out)
    operands = [ops.add(x), ops.add(_param(ctx, node, 1, x.ndim, axis)), ops.add(_param(ctx, node, 2, x.ndim, axis))]
    return ops.step(_quantize_expression(node, operands, [], dtype))


@lowers("DynamicQuantizeLinear")
def _dynamic_quantize_linear(node: Node, ctx: LowerContext) -> Step:
    x = ctx.operand(node.inputs[0])
    y = ctx.array(node.outputs[0])
    y_scale = ctx.array(node.outputs[1]) if len(node.outputs) > 1 and node.outputs[1] else None
    y_zero = ctx.array(node.outputs[2]) if len(node.outputs) > 2 and node.outputs[2] else None
    k = x.shape[-1] if x.ndim else 1
    y_rows = y.reshape(x.size // max(k, 1), k)

    def run() -> None:
        scale, zero = dynamic_quantize_rows(x, y_rows)
        if y_scale is not None:
            y_scale[...] = scale
        if y_zero is not None:
            y_zero[...] = zero

    return run


# ----------------------------------------------------------------------------------------------
# integer matrix products (exact reference paths)


def _zero_of(ctx: LowerContext, name: str) -> np.ndarray | None:
    return ctx.operand(name) if name else None


@lowers("MatMulInteger")
def _matmul_integer(node: Node, ctx: LowerContext) -> Step:
    """int32 (a - za) @ (b - zb), computed exactly in float64 BLAS (products < 2^53)."""
    a, b = ctx.operand(node.inputs[0]), ctx.operand(node.inputs[1])
    za = _zero_of(ctx, node.inputs[2] if len(node.inputs) > 2 else "")
    zb = _zero_of(ctx, node.inputs[3] if len(node.inputs) > 3 else "")
    out = ctx.array(node.outputs[0])
    b_const = ctx.const(node.inputs[1]) is not None and (zb is None or ctx.const(node.inputs[3]) is not None)

    def rhs_value() -> np.ndarray:
        rhs = b.astype(np.float64)
        return rhs - np.asarray(zb, dtype=np.float64) if zb is not None else rhs  # per-column zb broadcasts

    bf = rhs_value() if b_const else None

    def run() -> None:
        lhs = a.astype(np.float64)
        if za is not None:
            zaf = np.asarray(za, dtype=np.float64)
            lhs -= zaf.reshape(-1, 1) if zaf.size > 1 else zaf.reshape(())
        np.copyto(out, np.matmul(lhs, bf if bf is not None else rhs_value()), casting="unsafe")

    return run


@lowers("QLinearMatMul")
def _qlinear_matmul(node: Node, ctx: LowerContext) -> Step:
    a, b = ctx.operand(node.inputs[0]), ctx.operand(node.inputs[3])
    out = ctx.array(node.outputs[0])
    dtype = _out_qdtype(node, ctx)
    consts = [ctx.const(node.inputs[i]) for i in (1, 2, 4, 5, 6, 7)]
    if any(c is None for c in consts[:2] + consts[4:]):
        raise UnsupportedOperatorError(node.op_type, node.domain, node.name, "run-time scales")
    sa, za, sb, zb, sy, zy = consts
    if (ctx.const(node.inputs[3]) is not None and b.ndim == 2 and a.ndim >= 2 and sb is not None
            and zb is not None and np.asarray(sa).size == 1 and np.asarray(za).size == 1):
        name = node.inputs[3]
        packed = ctx.shared(("packed_int8", name, node.inputs[4], node.inputs[5]),
                            lambda: pack_b_int8(b, sb, zb))
        za_u8 = int(np.asarray(za).reshape(())) + (128 if a.dtype == np.int8 else 0)
        comp, scale = epilogue_vectors(packed, za_u8, float(np.asarray(sa).reshape(())),
                                       float(np.asarray(sy).reshape(())))
        m = a.size // packed.k
        aq = ctx.scratch((m, packed.kp), np.uint8)
        rowsum = ctx.scratch((m,), np.int32) if packed.has_zero else None
        zero_y = int(np.asarray(zy).reshape(()))

        def run() -> None:
            convert_rows(a, aq, rowsum)
            qgemm(aq, packed, out, comp, scale, rowsum=rowsum, out_zero=zero_y)

        return run
    # two activations (attention): exact integer products (float32 SIMD over K chunks that sum exactly;
    # float64 BLAS for broadcast batch dims or per-axis zero points), requantised like onnxruntime
    if sb is None or zb is None:
        raise UnsupportedOperatorError(node.op_type, node.domain, node.name, "run-time scales")
    lo, hi = _QRANGE[dtype]
    mult = np.float64(np.float32(sa) * np.float32(sb) / np.float32(sy)) if np.size(sb) == 1 else None
    if mult is None:
        raise UnsupportedOperatorError(node.op_type, node.domain, node.name, "per-column scales of an activation")

    k = a.shape[-1]
    # |a - za|, |b - zb| <= 255: over K <= _EXACT_F32_K terms every partial sum is an integer exact in
    # float32, so the float32 SIMD product (any summation order) equals the float64 one; a longer K is
    # done in such chunks, their exact sums added in float64 (attention's P.V at sequence 384: 2 chunks)
    f32 = (a.ndim == b.ndim >= 2 and a.shape[:-2] == b.shape[:-2] and np.size(za) == 1 and np.size(zb) == 1
           and out.flags.c_contiguous)
    if not f32:
        def run_float64() -> None:
            acc = np.matmul(a.astype(np.float64) - np.float64(za), b.astype(np.float64) - np.float64(zb))
            y = np.rint((acc * mult).astype(np.float32)) + np.float32(zy)
            np.copyto(out, np.clip(y, lo, hi), casting="unsafe")

        return run_float64
    chunks = [(k0, min(k, k0 + _EXACT_F32_K)) for k0 in range(0, k, _EXACT_F32_K)] or [(0, 0)]
    af, bf = ctx.scratch(a.shape, np.float32), ctx.scratch(b.shape, np.float32)
    acc32 = ctx.scratch(out.shape, np.float32)
    acc64 = ctx.scratch(out.shape, np.float64) if len(chunks) > 1 else None
    zero_y = int(np.asarray(zy).reshape(()))
    zero_a, zero_b = float(np.asarray(za).reshape(())), float(np.asarray(zb).reshape(()))

    def run_dynamic() -> None:
        centre(a, zero_a, af)
        centre(b, zero_b, bf)
        for i, (k0, k1) in enumerate(chunks):
            simd_matmul(af[..., k0:k1], bf[..., k0:k1, :], acc32)
            if acc64 is not None:
                if i == 0:
                    acc64[...] = acc32
                else:
                    accumulate(acc64, acc32)
        requantize(acc32 if acc64 is None else acc64, mult, zero_y, out)

    return run_dynamic


# ----------------------------------------------------------------------------------------------
# com.microsoft QLinearAdd / QLinearMul / QLinearSoftmax / MatMulNBits


@lowers("QLinearAdd", "QLinearMul", domain=MS_DOMAIN)
def _qlinear_binary(node: Node, ctx: LowerContext) -> Step:
    """Computed as onnxruntime's MLAS kernels do, so results agree bit for bit:
    Add: rint(fma(a, sa/sc, fma(b, sb/sc, zc - za*sa/sc - zb*sb/sc))); Mul: rint((a-za)(b-zb)*sa*sb/sc + zc).
    """
    out = ctx.array(node.outputs[0])
    dtype = _out_qdtype(node, ctx)
    params = [_const_scalar(ctx, node, i) for i in (1, 2, 4, 5, 6, 7)]
    if any(p is None for p in params):
        raise UnsupportedOperatorError(node.op_type, node.domain, node.name, "run-time or per-axis scales")
    sa, za, sb, zb, sc, zc = params
    ops = _Operands(out)
    a = ops.add(ctx.operand(node.inputs[0]), as_float=True)
    b = ops.add(ctx.operand(node.inputs[3]), as_float=True)
    lo, hi = _QRANGE[dtype]
    if node.op_type == "QLinearAdd":
        with np.errstate(all="ignore"):  # degenerate calibrations give infinite scales
            rac, rbc = np.float32(sa / sc), np.float32(sb / sc)
            const = np.float32(np.float32(zc - rac * za) - rbc * zb)
        r1, r2, c = (ops.add(np.float64(v)) for v in (rac, rbc, const))
        inner = f"np.float32(np.float64({b}) * {r2} + {c})"
        value = f"np.float32(np.float64({a}) * {r1} + np.float64({inner}))"
    else:
        za_t, zb_t, r, c = (ops.add(np.float32(v)) for v in (za, zb, np.float32(sa * sb / sc), zc))
        value = f"((({a} - {za_t}) * ({b} - {zb_t})) * {r} + {c})"
    return ops.step(f"{_CTOR[dtype]}(_min(_max(np.rint({value}), np.float32({lo})), np.float32({hi})))")


@lowers("QLinearSoftmax", domain=MS_DOMAIN)
def _qlinear_softmax(node: Node, ctx: LowerContext) -> Step:
    x = ctx.operand(node.inputs[0])
    out = ctx.array(node.outputs[0])
    dtype = _out_qdtype(node, ctx)
    xf = ctx.scratch(x.shape, np.float32)
    yf = ctx.scratch(x.shape, np.float32)
    ops_in = _Operands(xf)
    xs = ops_in.add(x, as_float=True)
    z_in = ops_in.add(_param(ctx, node, 2), as_float=True)
    dequant = ops_in.step(f"(({xs} - {z_in}) * {ops_in.add(_param(ctx, node, 1), as_float=True)})")
    ops_out = _Operands(out)
    ys = ops_out.add(yf)
    requant = ops_out.step(_quant_expr(ys, ops_out.add(_param(ctx, node, 3), as_float=True),
                                       ops_out.add(_param(ctx, node, 4), as_float=True), dtype))
    axis = int(node.attrs.get("axis", -1))
    if int(node.attrs.get("opset", 13)) < 13:
        axis %= max(x.ndim, 1)
        rows = int(np.prod(x.shape[:axis]))
        x2, y2 = xf.reshape(rows, -1), yf.reshape(rows, -1)

        def norm() -> None:
            softmax(x2, y2, -1, False)
    else:
        def norm() -> None:
            softmax(xf, yf, axis, False)

    def run() -> None:
        dequant()
        norm()
        requant()

    return run


@lowers("QGemm", domain=MS_DOMAIN)
def _qgemm(node: Node, ctx: LowerContext) -> Step:
    """QOperator's quantised Gemm (BERT's pooler: one row per sequence), computed exactly as
    `quant_ops.qgemm_reference` (integer sums in int64 through numpy, onnxruntime's requantisation)."""
    names = list(node.inputs) + [""] * (9 - len(node.inputs))
    if any(ctx.const(names[i]) is None for i in (1, 2, 4, 5, 7, 8) if names[i]):
        raise UnsupportedOperatorError(node.op_type, node.domain, node.name, "run-time scales")
    consts = {i: ctx.const(names[i]) for i in (1, 2, 3, 4, 5, 6, 7, 8) if names[i]}
    a = ctx.operand(names[0])
    b = consts.get(3) if 3 in consts else ctx.operand(names[3])
    out = ctx.array(node.outputs[0])
    arrays = [None] * 9
    for i, value in consts.items():
        arrays[i] = value

    def run() -> None:
        arrays[0] = a
        arrays[3] = b
        np.copyto(out, qgemm_reference(node, arrays))

    return run


@lowers("MatMulNBits", domain=MS_DOMAIN)
def _matmul_nbits(node: Node, ctx: LowerContext) -> Step:
    """Block-quantised weights dequantised to float32 once (shared by buckets), then the fp32 GEMM."""
    a = ctx.operand(node.inputs[0])
    out = ctx.array(node.outputs[0])
    names = node.inputs[1:4] + [""] * (3 - len(node.inputs[1:4]))
    if any(ctx.const(n) is None for n in names[:2]) or (names[2] and ctx.const(names[2]) is None):
        raise UnsupportedOperatorError(node.op_type, node.domain, node.name, "run-time weights")
    key = ("nbits_packed", *names, node.attrs.get("K"), node.attrs.get("N"))
    packed = ctx.shared(key, lambda: pack_b(matmulnbits_weight(
        node, ctx.const(names[0]), ctx.const(names[1]), ctx.const(names[2]) if names[2] else None)))
    bias = ctx.operand(node.inputs[5]) if len(node.inputs) > 5 and node.inputs[5] else None
    return lambda: gemm(a, packed, out, bias=bias)


# ----------------------------------------------------------------------------------------------
# sparsejit::QMatMul


class _SharedQuant:
    """Quantised activations (and their parameters) computed once per run for all their consumers."""

    def __init__(self, m: int, kp: int) -> None:
        self.aq = np.empty((m, kp), np.uint8)
        self.rowsum = np.empty(m, np.int32)
        self.scale = np.float32(1.0)
        self.zero = 0


@lowers("QMatMul", domain="sparsejit")
def _qmatmul(node: Node, ctx: LowerContext) -> Step:
    """out = act(dequant(quant(x) @ Wq) + bias) + residual with the int8 VNNI GEMM."""
    x = ctx.operand(node.inputs[0])
    w_name, s_name, z_name = node.inputs[1], node.inputs[2], node.inputs[3]
    w, ws = ctx.const(w_name), ctx.const(s_name)
    wz = ctx.const(z_name) if z_name else None
    assert w is not None and ws is not None
    kernels = ctx.shared(("weight_kernels", w_name, s_name, z_name),
                         lambda: QWeightKernels(pack_b_int8(w, ws, wz)))
    packed = kernels.packed
    bias_name = node.inputs[4] if len(node.inputs) > 4 else ""
    bias = pad_columns(ctx.const(bias_name), packed) if bias_name else None
    residual = ctx.operand(node.inputs[5]) if len(node.inputs) > 5 and node.inputs[5] else None
    activation = node.attrs.get("activation")
    out = ctx.array(node.outputs[0])
    mode = node.attrs["mode"]
    m = x.size // packed.k
    a_scale = float(node.attrs.get("a_scale", 1.0))
    a_zero = int(node.attrs.get("a_zero", 0))
    mult_name = node.inputs[6] if len(node.inputs) > 6 else ""  # graph.smooth_quant's per-channel scale
    multiplier = ctx.const(mult_name) if mult_name else None
    if mult_name and (multiplier is None or mode != "static"):
        raise UnsupportedOperatorError(node.op_type, node.domain, node.name, "a run-time or dynamic-mode multiplier")
    key = ("__qmatmul_act__", node.inputs[0], mode, a_scale, a_zero, packed.kp, mult_name)
    shared = ctx.arrays.get(key)  # type: ignore[call-overload]
    first = shared is None
    if first:
        shared = _SharedQuant(m, packed.kp)
        ctx.arrays[key] = shared  # type: ignore[index]
    rowsum = shared.rowsum if packed.has_zero else None
    fake_quant = node.attrs.get("fake_quant")  # QDQ roundings fused by quant_fusion, in every kernel's epilogue
    fq = fake_quant_params(fake_quant) if fake_quant else None
    name, kernel = kernels.choose(m, activation, fq)
    if name == "dense":  # operands bound once: no per-call argument checks in the hot loop
        product = bind_qgemm(shared.aq, packed, out, bias, activation, residual, rowsum, fake_quant=fq)
    else:
        def product(comp: np.ndarray, scale: np.ndarray) -> None:
            kernel(shared.aq, out, comp, scale, bias, residual, rowsum)

    if mode == "static":
        comp, scale = epilogue_vectors(packed, a_zero, a_scale)

        def run_static() -> None:
            if first:
                quantize_rows(x, shared.aq, a_scale, a_zero, shared.rowsum, multiplier)
            product(comp, scale)

        return run_static

    comp_buf = ctx.scratch((packed.n_panels * packed.nr,), np.int32)
    scale_buf = ctx.scratch((packed.n_panels * packed.nr,), np.float32)
    fill_epilogue = bind_epilogue_vectors(packed, comp_buf, scale_buf)

    def run_dynamic() -> None:
        if first:
            shared.scale, shared.zero = dynamic_quantize_rows(x, shared.aq, shared.rowsum)
        fill_epilogue(shared.zero, shared.scale)
        product(comp_buf, scale_buf)

    return run_dynamic
