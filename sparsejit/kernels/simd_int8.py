"""Extra explicit-SIMD intrinsics for the int8 kernels (quantisers and VNNI GEMM epilogues).

Complements `sparsejit.kernels.simd` (same `Vec16f` / `Vec16i` types and `(array, offset)`
addressing, offsets in elements of the array's own dtype, no bounds checks):

    vload_bcast4(a, off)        4 bytes of a uint8/int8 array at byte `off`, as one int32 in all lanes
                                (the A operand of `vpdpbusd`)
    visub(a, b), vimul(a, b), vimax(a, b), vimin(a, b)     lane-wise int32
    vihsum(v)                   horizontal int32 sum
    vrint(v)                    round to nearest, ties to even (float32)
    vcvt_f2i(v)                 float32 -> int32 (truncating; use after `vrint`)
    vcvt_rint(v)                float32 -> int32 rounded to nearest, ties to even (one `vcvtps2dq`)
    vhmax(v), vhmin(v)          horizontal float32 max / min
    vstore_bytes_mask(a, off, v, n)   truncate 16 x i32 to bytes and store the first `n` to a
                                uint8/int8 array
    vload_bytes_i(a, off, n)    first `n` bytes of a uint8 (zero-extended) or int8 (sign-extended)
                                array as 16 x i32 (other lanes 0)
    vpack_u8x4(a, b, c, d)      four int32 vectors (lanes <= 32767) saturated to [0, 255] and packed,
                                in order, into the 64 bytes of one vector (`vpackusdw`, `vpackuswb`,
                                `vpermd`: the register path; `vpmovusdb` to memory is slow on Zen 4),
                                stored with `simd.vistore` on the byte array
    vsum_bytes(acc, v)          acc + the sums of each 8-byte group of `v` (`vpsadbw`; acc holds 8
                                int64 lanes); vsum_bytes_total(acc) their total
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from sparsejit.kernels.simd import (
    _VF,
    _VI,
    LANES,
    Vec16f,
    Vec16i,
    _call_intrinsic,
    _elem_ptr,
    _lane_mask,
    _splat,
    vadd,
    vblend_lt,
    vbroadcast,
    vdiv,
    vec16f,
    vec16i,
    verf,
    vfma,
    vmul,
)
from sparsejit.kernels.target import host_target

__all__ = ["vload_bcast4", "visub", "vimul", "vimax", "vimin", "vihsum", "vrint", "vcvt_f2i", "vcvt_rint", "vhmax",
           "vhmin", "vstore_bytes_mask", "vload_bytes_i", "vpack_u8x4", "vsum_bytes",
           "vsum_bytes_total", "vfake_quant", "vgelu_erf_rounded", "FAKE_QUANT_POINTS", "fake_quant_params",
           "fake_quant_vector", "fake_quant_value"]

# Rounding points of an int8 product's float epilogue (`fq`, 4 floats each): 0 the product before the
# bias, 1 after it, 2 last; 3 and 4 inside a rounded GELU (`vgelu_erf_rounded`).
FAKE_QUANT_POINTS = 5

_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_VB8 = ir.VectorType(_I8, LANES)
_BYTE_TYPES = (types.uint8, types.int8)


def _is_bytes(ty: types.Type) -> bool:
    return isinstance(ty, types.Array) and ty.dtype in _BYTE_TYPES


@intrinsic
def vload_bcast4(typingctx, arr, off):
    """Load the 4 bytes at byte offset `off` as one int32 and broadcast it to all lanes."""
    if not _is_bytes(arr):
        return None

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
        val = builder.load(builder.bitcast(ptr, _I32.as_pointer()), align=1)
        return _splat(builder, val, _VI)
    return vec16i(arr, types.intp), codegen


def _make_ibinop(op: str, doc: str):  # type: ignore[no-untyped-def]
    def impl(typingctx, a, b):
        if not (isinstance(a, Vec16i) and isinstance(b, Vec16i)):
            return None

        def codegen(context, builder, sig, args):
            x, y = args
            if op == "sub":
                return builder.sub(x, y)
            if op == "mul":
                return builder.mul(x, y)
            if op == "max":
                return builder.select(builder.icmp_signed(">", x, y), x, y)
            return builder.select(builder.icmp_signed("<", x, y), x, y)
        return vec16i(a, b), codegen
    impl.__doc__ = doc
    return intrinsic(impl)


visub = _make_ibinop("sub", "Lane-wise int32 a - b (wrapping).")
vimul = _make_ibinop("mul", "Lane-wise int32 a * b (low 32 bits).")
vimax = _make_ibinop("max", "Lane-wise signed int32 max.")
vimin = _make_ibinop("min", "Lane-wise signed int32 min.")


def _tree(builder, x, combine):  # type: ignore[no-untyped-def]
    width = LANES
    while width > 1:
        half = width // 2
        lo = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(_I32, half), list(range(half))))
        hi = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(_I32, half), list(range(half, width))))
        x = combine(lo, hi)
        width = half
    return builder.extract_element(x, ir.Constant(_I32, 0))


@intrinsic
def vihsum(typingctx, v):
    """Horizontal int32 sum of the 16 lanes (wrapping)."""
    if not isinstance(v, Vec16i):
        return None

    def codegen(context, builder, sig, args):
        return _tree(builder, args[0], builder.add)
    return types.int32(v), codegen


@intrinsic
def vhmax(typingctx, v):
    """Horizontal float32 max of the 16 lanes."""
    if not isinstance(v, Vec16f):
        return None

    def codegen(context, builder, sig, args):
        return _tree(builder, args[0],
                     lambda a, b: builder.select(builder.fcmp_ordered(">", a, b), a, b))
    return types.float32(v), codegen


@intrinsic
def vhmin(typingctx, v):
    """Horizontal float32 min of the 16 lanes."""
    if not isinstance(v, Vec16f):
        return None

    def codegen(context, builder, sig, args):
        return _tree(builder, args[0],
                     lambda a, b: builder.select(builder.fcmp_ordered("<", a, b), a, b))
    return types.float32(v), codegen


@intrinsic
def vrint(typingctx, v):
    """Round each lane to the nearest integer, ties to even (`llvm.rint`, default rounding mode)."""
    if not isinstance(v, Vec16f):
        return None

    def codegen(context, builder, sig, args):
        return _call_intrinsic(builder, "llvm.rint.v16f32", _VF, list(args))
    return vec16f(v), codegen


@intrinsic
def vcvt_f2i(typingctx, v):
    """Convert 16 x float32 to 16 x int32, truncating toward zero."""
    if not isinstance(v, Vec16f):
        return None

    def codegen(context, builder, sig, args):
        return builder.fptosi(args[0], _VI)
    return vec16i(v), codegen


@intrinsic
def vcvt_rint(typingctx, v):
    """float32 -> int32 rounded as `vrint` rounds (the current mode: nearest, ties to even), in one
    instruction; lanes out of the int32 range (and NaN) give INT32_MIN."""
    if not isinstance(v, Vec16f):
        return None

    def codegen(context, builder, sig, args):
        if host_target().avx512:
            return _call_intrinsic(builder, "llvm.x86.avx512.mask.cvtps2dq.512", _VI,
                                   [args[0], ir.Constant(_VI, None), ir.Constant(ir.IntType(16), 0xFFFF),
                                    ir.Constant(_I32, 4)])  # 4 = _MM_FROUND_CUR_DIRECTION
        r = _call_intrinsic(builder, "llvm.rint.v16f32", _VF, [args[0]])
        inside = builder.and_(builder.fcmp_ordered(">=", r, ir.Constant(_VF, [-2.0 ** 31] * LANES)),
                              builder.fcmp_ordered("<", r, ir.Constant(_VF, [2.0 ** 31] * LANES)))
        safe = builder.fptosi(builder.select(inside, r, ir.Constant(_VF, [0.0] * LANES)), _VI)
        return builder.select(inside, safe, ir.Constant(_VI, [-(2 ** 31)] * LANES))
    return vec16i(v), codegen


@intrinsic
def vstore_bytes_mask(typingctx, arr, off, v, n):
    """Truncate the lanes of `v` to 8 bits and store the first `n` of them at byte offset `off`."""
    if not (_is_bytes(arr) and isinstance(v, Vec16i)):
        return None

    def codegen(context, builder, sig, args):
        ptr = builder.bitcast(_elem_ptr(context, builder, sig.args[0], args[0], args[1]), _VB8.as_pointer())
        data = builder.trunc(args[2], _VB8)
        # a one-lane masked byte store of a clamped vector came out of LLVM 22 as a 4-byte store (it wrote
        # 3 bytes past the lane; tests/test_quantized.py): store that lane as a byte instead
        one = builder.icmp_signed("==", args[3], ir.Constant(args[3].type, 1))
        with builder.if_else(one) as (single, several):
            with single:
                lane0 = builder.extract_element(data, ir.Constant(_I32, 0))
                builder.store(lane0, builder.bitcast(ptr, _I8.as_pointer()))
            with several:
                _call_intrinsic(builder, "llvm.masked.store.v16i8.p0", ir.VoidType(),
                                [data, ptr, ir.Constant(_I32, 1), _lane_mask(builder, args[3])])
        return context.get_dummy_value()
    return types.none(arr, types.intp, v, types.intp), codegen


@intrinsic
def vload_bytes_i(typingctx, arr, off, n):
    """Load the first `n` bytes at `off` as int32 lanes (zero-extended for uint8, sign- for int8)."""
    if not _is_bytes(arr):
        return None
    signed = arr.dtype == types.int8

    def codegen(context, builder, sig, args):
        ptr = builder.bitcast(_elem_ptr(context, builder, sig.args[0], args[0], args[1]), _VB8.as_pointer())
        mask = _lane_mask(builder, args[2])
        zero = ir.Constant(_VB8, [0] * LANES)
        data = _call_intrinsic(builder, "llvm.masked.load.v16i8.p0", _VB8, [ptr, ir.Constant(_I32, 1), mask, zero])
        return builder.sext(data, _VI) if signed else builder.zext(data, _VI)
    return vec16i(arr, types.intp, types.intp), codegen


_I16 = ir.IntType(16)
_I64 = ir.IntType(64)
_VW = ir.VectorType(_I16, 32)
_VB64 = ir.VectorType(_I8, 64)
_VQ = ir.VectorType(_I64, 8)
# after vpackusdw + vpackuswb, 128-bit lane L holds dwords (a[4L:4L+4], b[..], c[..], d[..]) as bytes
_UNINTERLEAVE = [(j % 4) * 4 + j // 4 for j in range(LANES)]
_VI32 = ir.VectorType(_I32, 2 * LANES)  # shuffle masks
_VI64 = ir.VectorType(_I32, 4 * LANES)


@intrinsic
def vpack_u8x4(typingctx, a, b, c, d):
    """Pack four int32 vectors (lanes at most 32767) into 64 bytes a0..a15 b0..b15 c0..c15 d0..d15,
    each saturated to [0, 255]; the bytes are returned as the 16 int32 lanes of one vector."""
    if not all(isinstance(t, Vec16i) for t in (a, b, c, d)):
        return None

    def codegen(context, builder, sig, args):
        if host_target().avx512:
            ab = _call_intrinsic(builder, "llvm.x86.avx512.packusdw.512", _VW, [args[0], args[1]])
            cd = _call_intrinsic(builder, "llvm.x86.avx512.packusdw.512", _VW, [args[2], args[3]])
            packed = builder.bitcast(_call_intrinsic(builder, "llvm.x86.avx512.packuswb.512", _VB64, [ab, cd]), _VI)
            return builder.shuffle_vector(packed, packed, ir.Constant(_VI, _UNINTERLEAVE))
        zero, top = ir.Constant(_VI, [0] * LANES), ir.Constant(_VI, [255] * LANES)
        parts = []
        for v in args:  # saturate to [0, 255], keep the low byte, concatenate in order
            v = builder.select(builder.icmp_signed("<", v, zero), zero, v)
            parts.append(builder.trunc(builder.select(builder.icmp_signed(">", v, top), top, v), _VB8))
        ab = builder.shuffle_vector(parts[0], parts[1], ir.Constant(_VI32, list(range(2 * LANES))))
        cd = builder.shuffle_vector(parts[2], parts[3], ir.Constant(_VI32, list(range(2 * LANES))))
        return builder.bitcast(builder.shuffle_vector(ab, cd, ir.Constant(_VI64, list(range(4 * LANES)))), _VI)
    return vec16i(a, b, c, d), codegen


@intrinsic
def vsum_bytes(typingctx, acc, v):
    """acc + sums of the unsigned bytes of `v` in 8-byte groups (`vpsadbw` against zero); `acc` is
    8 int64 lanes carried in a Vec16i (start from `vizero()`)."""
    if not (isinstance(acc, Vec16i) and isinstance(v, Vec16i)):
        return None

    def codegen(context, builder, sig, args):
        if host_target().avx512:
            zero = ir.Constant(_VB64, [0] * 64)
            sad = _call_intrinsic(builder, "llvm.x86.avx512.psad.bw.512", _VQ,
                                  [builder.bitcast(args[1], _VB64), zero])
        else:  # the same sums in plain vector IR
            wide = builder.zext(builder.bitcast(args[1], _VB64), ir.VectorType(_I64, 64))
            sad = None
            for j in range(8):  # byte j of every group of eight
                pick = ir.Constant(ir.VectorType(_I32, 8), [8 * g + j for g in range(8)])
                part = builder.shuffle_vector(wide, wide, pick)
                sad = part if sad is None else builder.add(sad, part)
        return builder.bitcast(builder.add(builder.bitcast(args[0], _VQ), sad), _VI)
    return vec16i(acc, v), codegen


@intrinsic
def vsum_bytes_total(typingctx, acc):
    """The total of the 8 int64 lanes of a `vsum_bytes` accumulator."""
    if not isinstance(acc, Vec16i):
        return None

    def codegen(context, builder, sig, args):
        q = builder.bitcast(args[0], _VQ)
        total = builder.extract_element(q, ir.Constant(_I32, 0))
        for i in range(1, 8):
            total = builder.add(total, builder.extract_element(q, ir.Constant(_I32, i)))
        return total
    return types.int64(acc), codegen


@njit(inline="always", cache=True)
def vfake_quant(x, fq, i):  # type: ignore[no-untyped-def]
    """DequantizeLinear(QuantizeLinear(x)) on the grid of point `i` of `fq` (float32, 4 per point: scale,
    lowest and highest of x / scale, unused; scale 0: x unchanged): rint(clamp(x / scale)) * scale, the
    quotient clamped by non-NaN-propagating compares as MLAS does (NaN -> lowest)."""
    scale = fq[4 * i]
    if scale == 0.0:
        return x
    t = vdiv(x, vbroadcast(scale))
    low = vbroadcast(fq[4 * i + 1])
    high = vbroadcast(fq[4 * i + 2])
    t = vblend_lt(low, t, t, low)
    t = vblend_lt(t, high, t, high)
    return vmul(vrint(t), vbroadcast(scale))


@njit(inline="always", cache=True)
def vgelu_erf_rounded(v, fq):  # type: ignore[no-untyped-def]
    """0.5 x (1 + erf(x / sqrt 2)) with erf(.) rounded to point 3 of `fq` and 1 + erf(.) to point 4 (where
    a QDQ graph's GELU rounds them; a point with scale 0 does not round)."""
    h = vmul(v, vbroadcast(0.5))
    e = verf(vmul(v, vbroadcast(0.7071067811865476)))
    if fq[12] == 0.0 and fq[16] == 0.0:
        return vfma(h, e, h)  # as `gemm._act_gelu_erf`, bit for bit
    return vmul(h, vfake_quant(vadd(vfake_quant(e, fq, 3), vbroadcast(1.0)), fq, 4))


def fake_quant_params(points: list, n_points: int = FAKE_QUANT_POINTS) -> np.ndarray:
    """The `fq` argument of `vfake_quant` from [scale, lowest, highest] per point (None: no rounding)."""
    fq = np.zeros(4 * n_points, np.float32)
    for i, point in enumerate(points):
        if point:
            fq[4 * i: 4 * i + 3] = point
    return fq


def fake_quant_vector(fq: np.ndarray | None) -> np.ndarray:
    """`fq` as the kernels take it: float32, C-contiguous, all `FAKE_QUANT_POINTS` points (missing ones
    do not round); None: no rounding anywhere."""
    out = np.zeros(4 * FAKE_QUANT_POINTS, np.float32)
    if fq is not None:
        flat = np.asarray(fq, dtype=np.float32).reshape(-1)
        if flat.size > out.size or flat.size % 4:
            raise ValueError(f"fake_quant must hold 4 floats per point, at most {FAKE_QUANT_POINTS} points")
        out[: flat.size] = flat
    return out


def fake_quant_value(x: np.float32, fq: np.ndarray, i: int) -> np.float32:
    """`vfake_quant` of one float32 value, in Python (for constants computed at plan time)."""
    scale, lowest, highest = fq[4 * i: 4 * i + 3]
    if not scale:
        return np.float32(x)
    t = np.float32(x / scale)
    t = t if t > lowest else lowest
    t = t if t < highest else highest
    return np.float32(np.rint(t) * scale)
