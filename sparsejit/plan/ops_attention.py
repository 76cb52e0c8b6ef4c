"""Lowering of the fused `sparsejit::Attention` node (see `sparsejit.graph.attention`): inputs
[q, k, v, terms...], or [qkv, "", "", terms...] with `packed_qkv` when one product made all three."""

from __future__ import annotations

import numpy as np

from sparsejit.graph.ir import Node
from sparsejit.kernels.attention import attention_kernel, bias_strides, packed_qkv_operands, qkv_operands
from sparsejit.kernels.simd_int8 import fake_quant_params, fake_quant_value
from sparsejit.plan.lowering import LowerContext, Step, lowers


@lowers("Attention", domain="sparsejit")
def _attention(node: Node, ctx: LowerContext) -> Step:
    if node.attrs.get("packed_qkv"):
        operands = packed_qkv_operands(ctx.operand(node.inputs[0]))
    else:
        operands = qkv_operands(*(ctx.operand(name) for name in node.inputs[:3]))
    out = ctx.array(node.outputs[0])
    heads, d = int(node.attrs["num_heads"]), int(node.attrs["head_size"])
    batch, sq, sk = operands[6:]
    terms = [ctx.operand(name) for name in node.inputs[3:]]
    signs = [np.float32(s) for s in node.attrs["term_signs"]]
    # The additive bias (sum of mask/position terms) keeps the terms' own broadcast shape, full on sk.
    shape = np.broadcast_shapes(*(t.shape for t in terms), (1, 1, 1, sk)) if terms else (1, 1, 1, sk)
    shape = (1,) * (4 - len(shape)) + tuple(shape)
    assert shape[0] in (1, batch) and shape[1] in (1, heads) and shape[2] in (1, sq) and shape[3] == sk
    bias = np.zeros(shape, dtype=np.float32)
    sb, sh, si = bias_strides(bias)
    fake_quant = node.attrs.get("fake_quant")  # [scale, lowest, highest] per point (see graph.attention)
    fq = fake_quant_params(fake_quant or [], 4)
    kernel = attention_kernel(d, fake_quant=bool(fake_quant))
    scale = np.float32(node.attrs["scale"])
    nan_to_zero = bool(node.attrs["nan_to_zero"])
    masked_fill = _masked_row_value(fq, nan_to_zero)

    def run() -> None:
        if terms:
            np.multiply(terms[0], signs[0], out=bias, casting="unsafe")
            for term, sign in zip(terms[1:], signs[1:], strict=True):
                bias[...] += sign * term
        kernel(*operands, bias, sb, sh, si, scale, nan_to_zero, heads, out, fq, masked_fill)

    return run


def _masked_row_value(fq: np.ndarray, nan_to_zero: bool) -> np.float32:
    """What a row whose every key is masked holds before P·V, as the kernel treats P: softmax gives NaN
    (as ONNX), then the probability rounding (NaN -> its lowest value), NaN -> 0 when asked, and the
    second rounding."""
    value = fake_quant_value(np.float32(np.nan), fq, 2)
    if nan_to_zero and value != value:
        value = np.float32(0.0)
    return fake_quant_value(value, fq, 3)
