"""Reference semantics (shape rules and numpy evaluation) of the quantisation operators.

- ai.onnx `QuantizeLinear` / `DequantizeLinear` at every opset (onnx.reference only implements some
  opsets), registered as evaluation overrides so weight-only Q/DQ subgraphs fold at load. Every
  folded `DequantizeLinear` of a constant 8-bit tensor is recorded in `Graph.int8_sources`
  (`dequantized_source`), so the QDQ fusion can run the MatMul it feeds on the original int8 weight.
- com.microsoft `MatMulNBits` (4-bit block-quantised weights), `QLinearAdd`, `QLinearMul`,
  `QLinearSoftmax` (emitted by onnxruntime's QOperator quantiser).
"""

from __future__ import annotations

import numpy as np

from sparsejit.errors import UnsupportedOperatorError
from sparsejit.graph.ir import Node, QuantSource, Value
from sparsejit.graph.reference import EVAL_OVERRIDES, CustomOp, register_custom_op

MS_DOMAIN = "com.microsoft"

_QRANGE = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127), np.dtype(np.int16): (-32768, 32767),
           np.dtype(np.uint16): (0, 65535), np.dtype(np.int32): (-(2**31), 2**31 - 1)}


# ----------------------------------------------------------------------------------------------
# helpers


def axis_shape(param: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """Reshape a per-axis (1-D) parameter so it broadcasts along `axis` of an `ndim` tensor."""
    param = np.asarray(param)
    if param.size == 1 or ndim == 0:
        return param.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = param.size
    return param.reshape(shape)


def dequantize(x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int = 1) -> np.ndarray:
    """(x - zero) * scale in float32 (per-tensor or per-axis scale)."""
    s = axis_shape(scale, x.ndim, axis).astype(np.float32)
    out = x.astype(np.float32)  # in place from here: weights are large and this runs at every load
    if zero is not None:
        out -= axis_shape(zero, x.ndim, axis).astype(np.float32)
    out *= s
    return out


def quantize(x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int = 1,
             dtype: np.dtype | None = None) -> np.ndarray:
    """saturate(rint(x / scale) + zero) as `dtype` (the zero point's dtype, default uint8)."""
    dtype = np.dtype(dtype if dtype is not None else (zero.dtype if zero is not None else np.uint8))
    lo, hi = _QRANGE[dtype]
    s = axis_shape(scale, x.ndim, axis).astype(np.float32)
    z = axis_shape(zero, x.ndim, axis).astype(np.float32) if zero is not None else np.float32(0.0)
    return np.clip(np.rint(x.astype(np.float32) / s) + z, lo, hi).astype(dtype)


def _input(arrays: list[np.ndarray | None], i: int) -> np.ndarray | None:
    return arrays[i] if len(arrays) > i else None


# ----------------------------------------------------------------------------------------------
# provenance of folded DequantizeLinear results


def dequantized_source(node: Node, arrays: list[np.ndarray | None]) -> QuantSource | None:
    """What a DequantizeLinear of constant `arrays` reads, when its input is an 8-bit tensor (a weight):
    recorded in `Graph.int8_sources` when the node is folded, so the QDQ fusion can run the MatMul it
    feeds on the original int8 weight."""
    if node.domain or node.op_type != "DequantizeLinear" or node.attrs.get("block_size", 0):
        return None
    x, scale, zero = arrays[0], arrays[1], _input(arrays, 2)
    if x is None or scale is None or x.dtype not in (np.int8, np.uint8) or x.size <= 1:
        return None
    return QuantSource(x, np.asarray(scale, np.float32), zero, int(node.attrs.get("axis", 1)))


# ----------------------------------------------------------------------------------------------
# ai.onnx QuantizeLinear / DequantizeLinear folding


def _eval_dequantize(node: Node, arrays: list[np.ndarray | None]) -> list[np.ndarray]:
    if node.attrs.get("block_size", 0):
        raise UnsupportedOperatorError(node.op_type, node.domain, node.name, "blocked quantisation")
    x, scale, zero = arrays[0], arrays[1], _input(arrays, 2)
    axis = int(node.attrs.get("axis", 1))
    return [dequantize(x, scale, zero, axis)]


def _eval_quantize(node: Node, arrays: list[np.ndarray | None]) -> list[np.ndarray]:
    if node.attrs.get("block_size", 0):
        raise UnsupportedOperatorError(node.op_type, node.domain, node.name, "blocked quantisation")
    x, scale, zero = arrays[0], arrays[1], _input(arrays, 2)
    dtype = None
    if zero is None and node.attrs.get("output_dtype"):
        from onnx import helper

        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(int(node.attrs["output_dtype"])))
    return [quantize(x, scale, zero, int(node.attrs.get("axis", 1)), dtype)]


EVAL_OVERRIDES["DequantizeLinear"] = _eval_dequantize
EVAL_OVERRIDES["QuantizeLinear"] = _eval_quantize


# ----------------------------------------------------------------------------------------------
# com.microsoft MatMulNBits


def matmulnbits_weight(node: Node, b: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None) -> np.ndarray:
    """The float32 [K, N] weight W of a MatMulNBits node (Y = A @ W), dequantised block-wise.

    B is uint8 [N, K/block, block*bits/8] (low nibble first for 4 bits); W[k, n] = (q[n, k] - zp) *
    scale[n, k // block] with zp = 2^(bits-1) when no zero points are given.
    """
    k, n = int(node.attrs["K"]), int(node.attrs["N"])
    bits, block = int(node.attrs.get("bits", 4)), int(node.attrs.get("block_size", 32))
    if bits not in (4, 8) or node.attrs.get("g_idx"):
        raise UnsupportedOperatorError(node.op_type, node.domain, node.name, f"bits={bits}")
    n_blocks = -(-k // block)
    raw = np.asarray(b, dtype=np.uint8).reshape(n, n_blocks, -1)
    if bits == 4:
        q = np.empty((n, n_blocks, raw.shape[2] * 2), dtype=np.uint8)
        q[..., 0::2] = raw & 0x0F
        q[..., 1::2] = raw >> 4
    else:
        q = raw
    q = q.reshape(n, n_blocks, block).astype(np.float32)
    s = np.asarray(scales, dtype=np.float32).reshape(n, n_blocks, 1)
    if zeros is None:
        zp = np.float32(2 ** (bits - 1))
    elif zeros.dtype == np.uint8:
        zr = zeros.reshape(n, -1)
        if bits == 4:
            z = np.empty((n, zr.shape[1] * 2), dtype=np.uint8)
            z[:, 0::2] = zr & 0x0F
            z[:, 1::2] = zr >> 4
            zr = z
        zp = zr[:, :n_blocks].astype(np.float32).reshape(n, n_blocks, 1)
    else:  # float zero points: W = (q - zp) * s is not the definition; they are offsets: q*s + zp_f
        raise UnsupportedOperatorError(node.op_type, node.domain, node.name, "float zero points")
    w = ((q - zp) * s).reshape(n, n_blocks * block)[:, :k]
    return np.ascontiguousarray(w.T, dtype=np.float32)


def _infer_matmulnbits(node: Node, inputs: list[Value | None], consts: list[np.ndarray | None]) -> list[Value]:
    a = inputs[0]
    assert a is not None and a.shape is not None
    return [Value(node.outputs[0], a.dtype, tuple(a.shape[:-1]) + (int(node.attrs["N"]),))]


def _eval_matmulnbits(node: Node, arrays: list[np.ndarray | None]) -> list[np.ndarray]:
    w = matmulnbits_weight(node, arrays[1], arrays[2], _input(arrays, 3))
    y = np.matmul(arrays[0].astype(np.float32), w)
    bias = _input(arrays, 5)
    if bias is not None:
        y = y + bias
    return [y.astype(arrays[0].dtype)]


register_custom_op(MS_DOMAIN, "MatMulNBits", CustomOp(_infer_matmulnbits, _eval_matmulnbits))


# ----------------------------------------------------------------------------------------------
# com.microsoft QLinearAdd / QLinearMul / QLinearSoftmax


def _out_dtype(arrays_or_values: list, index: int, fallback: np.dtype) -> np.dtype:
    item = arrays_or_values[index] if len(arrays_or_values) > index else None
    return np.dtype(item.dtype) if item is not None else np.dtype(fallback)


def _infer_qlinear_binary(node: Node, inputs: list[Value | None], consts: list[np.ndarray | None]) -> list[Value]:
    a, b = inputs[0], inputs[3]
    assert a is not None and b is not None and a.shape is not None and b.shape is not None
    shape = np.broadcast_shapes(tuple(a.shape), tuple(b.shape))
    return [Value(node.outputs[0], _out_dtype(inputs, 7, a.dtype), tuple(int(d) for d in shape))]


def _eval_qlinear_binary(node: Node, arrays: list[np.ndarray | None]) -> list[np.ndarray]:
    a = dequantize(arrays[0], arrays[1], _input(arrays, 2))
    b = dequantize(arrays[3], arrays[4], _input(arrays, 5))
    y = a + b if node.op_type == "QLinearAdd" else a * b
    zero = _input(arrays, 7)
    return [quantize(y, arrays[6], zero, dtype=zero.dtype if zero is not None else arrays[0].dtype)]


def _infer_qlinear_softmax(node: Node, inputs: list[Value | None], consts: list[np.ndarray | None]) -> list[Value]:
    x = inputs[0]
    assert x is not None
    return [Value(node.outputs[0], _out_dtype(inputs, 4, x.dtype), x.shape)]


def softmax_reference(x: np.ndarray, axis: int, opset: int) -> np.ndarray:
    """Softmax with ONNX semantics of `opset` (before 13: over the flattened trailing dims)."""
    if opset < 13:
        axis %= max(x.ndim, 1)
        flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
        e = np.exp(flat - flat.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).reshape(x.shape)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _eval_qlinear_softmax(node: Node, arrays: list[np.ndarray | None]) -> list[np.ndarray]:
    x = dequantize(arrays[0], arrays[1], _input(arrays, 2))
    y = softmax_reference(x, int(node.attrs.get("axis", -1)), int(node.attrs.get("opset", 13)))
    zero = _input(arrays, 4)
    return [quantize(y, arrays[3], zero, dtype=zero.dtype if zero is not None else arrays[0].dtype)]


for _op in ("QLinearAdd", "QLinearMul"):
    register_custom_op(MS_DOMAIN, _op, CustomOp(_infer_qlinear_binary, _eval_qlinear_binary))
register_custom_op(MS_DOMAIN, "QLinearSoftmax", CustomOp(_infer_qlinear_softmax, _eval_qlinear_softmax))


# ----------------------------------------------------------------------------------------------
# com.microsoft QGemm (what quantize_static's QOperator form writes for a Gemm, e.g. BERT's pooler)


def _qgemm_dims(node: Node, a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> tuple[int, int]:
    m = a_shape[1] if node.attrs.get("transA", 0) else a_shape[0]
    n = b_shape[0] if node.attrs.get("transB", 0) else b_shape[1]
    return int(m), int(n)


def _infer_qgemm(node: Node, inputs: list[Value | None], consts: list[np.ndarray | None]) -> list[Value]:
    a, b = inputs[0], inputs[3]
    assert a is not None and b is not None and a.shape is not None and b.shape is not None
    has_y = len(node.inputs) > 7 and bool(node.inputs[7])
    dtype = _out_dtype(inputs, 8, a.dtype) if has_y else np.dtype(np.float32)
    return [Value(node.outputs[0], dtype, _qgemm_dims(node, tuple(a.shape), tuple(b.shape)))]


def qgemm_reference(node: Node, arrays: list[np.ndarray | None]) -> np.ndarray:
    """As onnxruntime's QGemm: int32 C + (A - za)(B - zb) exactly, times alpha * sa * sb (per column) [/ sy],
    then rounded half to even, offset by zy and saturated when Y is quantised; float32 otherwise."""
    a, b = arrays[0], arrays[3]
    assert a is not None and b is not None
    if node.attrs.get("transA", 0):
        a = a.T
    if node.attrs.get("transB", 0):
        b = b.T
    za, zb = _input(arrays, 2), _input(arrays, 5)
    acc = (a.astype(np.int64) - (0 if za is None else np.int64(za.reshape(())))) @ (
        b.astype(np.int64) - (0 if zb is None else zb.astype(np.int64).reshape(-1)))
    c = _input(arrays, 6)
    if c is not None:
        acc = acc + c.astype(np.int64)
    sa, sb = np.float32(arrays[1].reshape(())), arrays[4].astype(np.float32).reshape(-1)
    scale = np.float32(node.attrs.get("alpha", 1.0)) * sa * sb
    sy, zy = _input(arrays, 7), _input(arrays, 8)
    if sy is None:
        return acc.astype(np.float32) * scale
    scale = scale / np.float32(sy.reshape(()))
    dtype = zy.dtype if zy is not None else a.dtype
    lo, hi = (-128, 127) if dtype == np.int8 else (0, 255)
    y = np.rint(acc.astype(np.int32).astype(np.float32) * scale) + np.float32(0 if zy is None else zy.reshape(()))
    return np.clip(y, lo, hi).astype(dtype)


register_custom_op(MS_DOMAIN, "QGemm", CustomOp(_infer_qgemm, lambda node, arrays: [qgemm_reference(node, arrays)]))
