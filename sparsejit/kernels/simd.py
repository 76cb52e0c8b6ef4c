"""Explicit 512-bit SIMD for Numba: 16 x float32 and 16 x int32 vector values and their intrinsics.

Plain `@njit` loops leave most of the FMA throughput unused (LLVM keeps 256-bit vectors and the
index arithmetic of `a[i * K + k]` drags in negative-index wrap-around code). This module gives
kernels a vector type whose LLVM data model *is* `<16 x float>` (or `<16 x i32>`), so values stay in
zmm registers as SSA values, plus small intrinsics that address arrays by raw pointer arithmetic.

All memory intrinsics take `(array, offset)` where `offset` counts *elements* from the start of the
array's data buffer, whatever the array's shape: there is no bounds checking and no wrap-around.
Usable from any `@njit` function, including generated kernel modules (`from sparsejit.kernels.simd
import *` or `import sparsejit.kernels.simd as simd`).

fp32 (`Vec16f`):
    vzero(), vbroadcast(x), vload(a, off), vload_a(a, off) (64-byte aligned), vload_bcast(a, off)
    (one element broadcast to all lanes), vload_mask(a, off, n), vstore(a, off, v), vstore_a,
    vstore_mask(a, off, v, n) (first `n` lanes only, 0 <= n <= 16), vadd, vsub, vmul, vdiv, vmax,
    vmin, vfma(a, b, c) = a * b + c, vhsum(v), vextract(v, i), vblend_lt(x, y, a, b) = x < y ? a : b,
    vabs, vprefetch(a, off) (cache line into L2), vstore_nt(a, off, v) (non-temporal, aligned) and
    vsfence() (orders this thread's non-temporal stores before its later stores),
    vtranspose16(src, soff, sstride, nrows, dst, doff, dstride) (a 16 x 16 block, in registers).
    verf(v), vtanh(v): rational approximations (max abs error ~1e-7 in float32), no exp needed.
    vexp(v) (relative error ~1e-7, softmax's exponential), vscalef(v, n) = v * 2**floor(n), vfloor.
int32 (`Vec16i`):
    vizero(), vibroadcast(x), viload(a, off), vistore(a, off, v), viadd, vdpbusd(acc, u8x4, s8x4)
    (AVX-512 VNNI), vcvt_i2f(v).
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from sparsejit.kernels.target import host_target

__all__ = [
    "Vec16f", "Vec16i", "vec16f", "vec16i",
    "vzero", "vbroadcast", "vload", "vload_a", "vload_bcast", "vload_mask",
    "vstore", "vstore_a", "vstore_nt", "vstore_mask",
    "vadd", "vsub", "vmul", "vdiv", "vmax", "vmin", "vfma", "vabs", "vhsum", "vextract", "vblend_lt",
    "vprefetch", "vsfence", "vtranspose16",
    "verf", "vtanh", "vexp", "vfloor", "vscalef",
    "vizero", "vibroadcast", "viload", "vistore", "viadd", "vdpbusd", "vdpbf16ps", "vcvt_i2f",
]

LANES = 16
_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_VF = ir.VectorType(_F32, LANES)
_VI = ir.VectorType(_I32, LANES)
_VB = ir.VectorType(ir.IntType(1), LANES)


class Vec16f(types.Type):
    """Numba type of a `<16 x float>` register value."""

    def __init__(self) -> None:
        super().__init__(name="vec16f32")


class Vec16i(types.Type):
    """Numba type of a `<16 x i32>` register value."""

    def __init__(self) -> None:
        super().__init__(name="vec16i32")


vec16f = Vec16f()
vec16i = Vec16i()


@register_model(Vec16f)
class _Vec16fModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):  # type: ignore[no-untyped-def]
        super().__init__(dmm, fe_type, _VF)


@register_model(Vec16i)
class _Vec16iModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):  # type: ignore[no-untyped-def]
        super().__init__(dmm, fe_type, _VI)


# ----------------------------------------------------------------------------------------------
# helpers (lowering side)


def _is_array_of(ty: types.Type, dtype: types.Type) -> bool:
    return isinstance(ty, types.Array) and ty.dtype == dtype


def _elem_ptr(context, builder, aryty, ary, off):  # type: ignore[no-untyped-def]
    """Pointer to element `off` of the array's flat data buffer (no bounds check)."""
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.gep(data, [off], inbounds=True)


def _splat(builder, value, vecty):  # type: ignore[no-untyped-def]
    undef = ir.Constant(vecty, ir.Undefined)
    first = builder.insert_element(undef, value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(first, undef, ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES))


def _lane_mask(builder, n):  # type: ignore[no-untyped-def]
    """<16 x i1> with lanes [0, n) set."""
    n32 = builder.trunc(n, _I32) if n.type.width > 32 else builder.sext(n, _I32) if n.type.width < 32 else n
    lanes = ir.Constant(_VI, list(range(LANES)))
    return builder.icmp_signed("<", lanes, _splat(builder, n32, _VI))


def _call_intrinsic(builder, name, retty, args):  # type: ignore[no-untyped-def]
    module = builder.module
    fnty = ir.FunctionType(retty, [a.type for a in args])
    fn = cgutils.get_or_insert_function(module, fnty, name)
    return builder.call(fn, args)


# ----------------------------------------------------------------------------------------------
# fp32 vectors


@intrinsic
def vzero(typingctx):
    """All-zero vector."""
    def codegen(context, builder, sig, args):
        return ir.Constant(_VF, [0.0] * LANES)
    return vec16f(), codegen


@intrinsic
def vbroadcast(typingctx, x):
    """Broadcast a scalar (any number type, converted to float32) to all lanes."""
    if not isinstance(x, (types.Float, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        val = context.cast(builder, args[0], sig.args[0], types.float32)
        return _splat(builder, val, _VF)
    return vec16f(x), codegen


def _make_load(align: int, doc: str):  # type: ignore[no-untyped-def]
    def impl(typingctx, arr, off):
        if not _is_array_of(arr, types.float32):
            return None

        def codegen(context, builder, sig, args):
            ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
            return builder.load(builder.bitcast(ptr, _VF.as_pointer()), align=align)
        return vec16f(arr, types.intp), codegen
    impl.__doc__ = doc
    return intrinsic(impl)


vload = _make_load(4, "Load 16 floats from `a` at element offset `off` (unaligned).")
vload_a = _make_load(64, "Load 16 floats from `a` at element offset `off` (address must be 64-byte aligned).")


@intrinsic
def vload_bcast(typingctx, arr, off):
    """Load the float at element offset `off` of `a` and broadcast it to all lanes."""
    if not _is_array_of(arr, types.float32):
        return None

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
        return _splat(builder, builder.load(ptr, align=4), _VF)
    return vec16f(arr, types.intp), codegen


@intrinsic
def vload_mask(typingctx, arr, off, n):
    """Load the first `n` floats at offset `off` (other lanes 0, their memory never touched)."""
    if not _is_array_of(arr, types.float32):
        return None

    def codegen(context, builder, sig, args):
        ptr = builder.bitcast(_elem_ptr(context, builder, sig.args[0], args[0], args[1]), _VF.as_pointer())
        mask = _lane_mask(builder, args[2])
        zero = ir.Constant(_VF, [0.0] * LANES)
        return _call_intrinsic(builder, "llvm.masked.load.v16f32.p0", _VF,
                               [ptr, ir.Constant(_I32, 4), mask, zero])
    return vec16f(arr, types.intp, types.intp), codegen


def _make_store(align: int, doc: str):  # type: ignore[no-untyped-def]
    def impl(typingctx, arr, off, v):
        if not _is_array_of(arr, types.float32) or not isinstance(v, Vec16f):
            return None

        def codegen(context, builder, sig, args):
            ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
            builder.store(args[2], builder.bitcast(ptr, _VF.as_pointer()), align=align)
            return context.get_dummy_value()
        return types.none(arr, types.intp, v), codegen
    impl.__doc__ = doc
    return intrinsic(impl)


vstore = _make_store(4, "Store 16 floats to `a` at element offset `off` (unaligned).")
vstore_a = _make_store(64, "Store 16 floats to `a` at element offset `off` (64-byte aligned address).")


@intrinsic
def vstore_nt(typingctx, arr, off, v):
    """Non-temporal store of 16 floats at a 64-byte aligned element offset (`vmovntps`): the line goes
    to memory without being read into the cache first (for outputs far larger than the caches)."""
    if not _is_array_of(arr, types.float32) or not isinstance(v, Vec16f):
        return None

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
        inst = builder.store(args[2], builder.bitcast(ptr, _VF.as_pointer()), align=64)
        inst.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(_I32, 1)]))
        return context.get_dummy_value()
    return types.none(arr, types.intp, v), codegen


@intrinsic
def vstore_mask(typingctx, arr, off, v, n):
    """Store the first `n` lanes of `v` to `a` at offset `off`; memory past them is not touched."""
    if not _is_array_of(arr, types.float32) or not isinstance(v, Vec16f):
        return None

    def codegen(context, builder, sig, args):
        ptr = builder.bitcast(_elem_ptr(context, builder, sig.args[0], args[0], args[1]), _VF.as_pointer())
        mask = _lane_mask(builder, args[3])
        _call_intrinsic(builder, "llvm.masked.store.v16f32.p0", ir.VoidType(),
                        [args[2], ptr, ir.Constant(_I32, 4), mask])
        return context.get_dummy_value()
    return types.none(arr, types.intp, v, types.intp), codegen


def _make_binop(op: str, doc: str):  # type: ignore[no-untyped-def]
    def impl(typingctx, a, b):
        if not (isinstance(a, Vec16f) and isinstance(b, Vec16f)):
            return None

        def codegen(context, builder, sig, args):
            x, y = args
            if op == "add":
                return builder.fadd(x, y)
            if op == "sub":
                return builder.fsub(x, y)
            if op == "mul":
                return builder.fmul(x, y)
            if op == "div":
                return builder.fdiv(x, y)
            if op == "max":  # x > y ? x : y  -> vmaxps (NaN in x propagates y, like maxps)
                return builder.select(builder.fcmp_ordered(">", x, y), x, y)
            return builder.select(builder.fcmp_ordered("<", x, y), x, y)
        return vec16f(a, b), codegen
    impl.__doc__ = doc
    return intrinsic(impl)


vadd = _make_binop("add", "Lane-wise a + b.")
vsub = _make_binop("sub", "Lane-wise a - b.")
vmul = _make_binop("mul", "Lane-wise a * b.")
vdiv = _make_binop("div", "Lane-wise a / b.")
vmax = _make_binop("max", "Lane-wise max(a, b).")
vmin = _make_binop("min", "Lane-wise min(a, b).")


@intrinsic
def vfma(typingctx, a, b, c):
    """Fused multiply-add a * b + c (`llvm.fma.v16f32`)."""
    if not all(isinstance(t, Vec16f) for t in (a, b, c)):
        return None

    def codegen(context, builder, sig, args):
        return _call_intrinsic(builder, "llvm.fma.v16f32", _VF, list(args))
    return vec16f(a, b, c), codegen


@intrinsic
def vabs(typingctx, a):
    """Lane-wise |a|."""
    if not isinstance(a, Vec16f):
        return None

    def codegen(context, builder, sig, args):
        return _call_intrinsic(builder, "llvm.fabs.v16f32", _VF, list(args))
    return vec16f(a), codegen


@intrinsic
def vblend_lt(typingctx, x, y, a, b):
    """Lane-wise `x < y ? a : b`."""
    if not all(isinstance(t, Vec16f) for t in (x, y, a, b)):
        return None

    def codegen(context, builder, sig, args):
        return builder.select(builder.fcmp_ordered("<", args[0], args[1]), args[2], args[3])
    return vec16f(x, y, a, b), codegen


@intrinsic
def vhsum(typingctx, v):
    """Horizontal sum of the 16 lanes (as float32; pairwise tree order)."""
    if not isinstance(v, Vec16f):
        return None

    def codegen(context, builder, sig, args):
        x = args[0]
        width = LANES
        while width > 1:
            half = width // 2
            lo = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(_I32, half), list(range(half))))
            hi = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(_I32, half),
                                                          list(range(half, width))))
            x = builder.fadd(lo, hi)
            width = half
        return builder.extract_element(x, ir.Constant(_I32, 0))
    return types.float32(v), codegen


@intrinsic
def vsfence(typingctx):
    """`sfence`: this thread's earlier non-temporal stores are visible before any later store."""
    def codegen(context, builder, sig, args):
        _call_intrinsic(builder, "llvm.x86.sse.sfence", ir.VoidType(), [])
        return context.get_dummy_value()
    return types.none(), codegen


@intrinsic
def vextract(typingctx, v, i):
    """Lane `i` of `v` as a float32 scalar."""
    if not isinstance(v, Vec16f):
        return None

    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], args[1])
    return types.float32(v, types.intp), codegen


@intrinsic
def vprefetch(typingctx, arr, off):
    """Prefetch the cache line holding element `off` of `a` into L2 (`prefetcht1`); never faults."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        ptr = builder.bitcast(_elem_ptr(context, builder, sig.args[0], args[0], args[1]),
                              ir.IntType(8).as_pointer())
        _call_intrinsic(builder, "llvm.prefetch.p0", ir.VoidType(),
                        [ptr, ir.Constant(_I32, 0), ir.Constant(_I32, 2), ir.Constant(_I32, 1)])
        return context.get_dummy_value()
    return types.none(arr, types.intp), codegen


def _block_swap_masks(b: int) -> tuple[list[int], list[int]]:
    """Shuffle masks that swap the off-diagonal b x b blocks of rows (r, r + b) (one transpose stage)."""
    low = [c if c & b == 0 else LANES + c - b for c in range(LANES)]
    high = [c + b if c & b == 0 else LANES + c for c in range(LANES)]
    return low, high


@intrinsic
def vtranspose16(typingctx, src, soff, sstride, nrows, dst, doff, dstride):
    """dst[doff + c*dstride + r] = src[soff + r*sstride + c] for a 16 x 16 float32 block, in registers.

    Rows r >= `nrows` of the source are read as zeros (their memory is not touched). Four stages of
    block swaps (8, 4, 2, 1) of two-register shuffles: 64 shuffles for 256 elements, where a scalar
    transpose needs 256 loads and 256 strided stores.
    """
    if not (_is_array_of(src, types.float32) and _is_array_of(dst, types.float32)):
        return None

    def codegen(context, builder, sig, args):
        s_ary, s_off, s_stride, n, d_ary, d_off, d_stride = args
        zero = ir.Constant(_VF, [0.0] * LANES)
        rows = []
        for r in range(LANES):
            off = builder.add(s_off, builder.mul(s_stride, ir.Constant(s_stride.type, r)))
            ptr = builder.bitcast(_elem_ptr(context, builder, sig.args[0], s_ary, off), _VF.as_pointer())
            present = builder.icmp_signed(">", n, ir.Constant(n.type, r))
            mask = _splat_bool(builder, present)
            rows.append(_call_intrinsic(builder, "llvm.masked.load.v16f32.p0", _VF,
                                        [ptr, ir.Constant(_I32, 4), mask, zero]))
        for b in (8, 4, 2, 1):
            low, high = _block_swap_masks(b)
            for r in range(LANES):
                if r & b:
                    continue
                x, y = rows[r], rows[r + b]
                rows[r] = builder.shuffle_vector(x, y, ir.Constant(_VI, low))
                rows[r + b] = builder.shuffle_vector(x, y, ir.Constant(_VI, high))
        for c in range(LANES):
            off = builder.add(d_off, builder.mul(d_stride, ir.Constant(d_stride.type, c)))
            ptr = _elem_ptr(context, builder, sig.args[4], d_ary, off)
            builder.store(rows[c], builder.bitcast(ptr, _VF.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.none(src, types.intp, types.intp, types.intp, dst, types.intp, types.intp), codegen


def _splat_bool(builder, flag):  # type: ignore[no-untyped-def]
    undef = ir.Constant(_VB, ir.Undefined)
    first = builder.insert_element(undef, flag, ir.Constant(_I32, 0))
    return builder.shuffle_vector(first, undef, ir.Constant(_VI, [0] * LANES))


# ----------------------------------------------------------------------------------------------
# int32 vectors (for int8 VNNI kernels)


@intrinsic
def vizero(typingctx):
    """All-zero int32 vector."""
    def codegen(context, builder, sig, args):
        return ir.Constant(_VI, [0] * LANES)
    return vec16i(), codegen


@intrinsic
def vibroadcast(typingctx, x):
    """Broadcast an integer scalar (converted to int32) to all lanes."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return _splat(builder, context.cast(builder, args[0], sig.args[0], types.int32), _VI)
    return vec16i(x), codegen


@intrinsic
def viload(typingctx, arr, off):
    """Load 64 bytes at *byte-or-element* offset `off` of an int32/uint8/int8 array as 16 x i32.

    `off` counts elements of the array's own dtype (for an int8 array: bytes).
    """
    if not (isinstance(arr, types.Array) and arr.dtype in (types.int32, types.uint32, types.int8,
                                                           types.uint8)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
        return builder.load(builder.bitcast(ptr, _VI.as_pointer()), align=1)
    return vec16i(arr, types.intp), codegen


@intrinsic
def vistore(typingctx, arr, off, v):
    """Store 16 x i32 (64 bytes) to an int32 array at element offset `off`, or to a uint8/int8 array
    at byte offset `off` (unaligned)."""
    byte_array = isinstance(arr, types.Array) and arr.dtype in (types.uint8, types.int8)
    if not ((_is_array_of(arr, types.int32) or byte_array) and isinstance(v, Vec16i)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(ptr, _VI.as_pointer()), align=1 if byte_array else 4)
        return context.get_dummy_value()
    return types.none(arr, types.intp, v), codegen


@intrinsic
def viadd(typingctx, a, b):
    """Lane-wise int32 a + b (wrapping)."""
    if not (isinstance(a, Vec16i) and isinstance(b, Vec16i)):
        return None

    def codegen(context, builder, sig, args):
        return builder.add(args[0], args[1])
    return vec16i(a, b), codegen


@intrinsic
def vdpbusd(typingctx, acc, a, b):
    """VNNI: acc + sum over groups of 4 bytes of u8(a) * s8(b) (`vpdpbusd`), per int32 lane."""
    if not all(isinstance(t, Vec16i) for t in (acc, a, b)):
        return None

    def codegen(context, builder, sig, args):
        if host_target().avx512_vnni:
            return _call_intrinsic(builder, "llvm.x86.avx512.vpdpbusd.512", _VI, list(args))
        if host_target().avx_vnni:
            return _avx_vnni_dpbusd(builder, *args)
        return _portable_dpbusd(builder, *args)
    return vec16i(acc, a, b), codegen


def _portable_dpbusd(builder, acc, a, b):  # type: ignore[no-untyped-def]
    """`vpdpbusd` without AVX-512 VNNI, exactly (4 products of at most 255 * 128 fit in int32).

    On AVX2, each int32 lane's bytes split into two int16 pairs in place, with no shuffles: the even
    bytes (a0, a2) and odd bytes (a1, a3) of `a` zero-extended by masking and shifting the lane, those
    of `b` sign-extended by shifting its int16 halves; two `vpmaddwd` then give a0*b0 + a2*b2 and
    a1*b1 + a3*b3 (exact, unlike `vpmaddubsw`, whose int16 pair sums saturate). In a GEMM tile the
    splits of a broadcast activation and of a weight vector are shared by the whole tile row / column,
    so two `vpmaddwd` and two adds remain per 32 products. Elsewhere: plain vector IR."""
    if host_target().has("avx2"):
        words = ir.VectorType(ir.IntType(16), 2 * LANES)
        low_bytes = ir.Constant(_VI, [0x00FF00FF] * LANES)
        eight = ir.Constant(words, [8] * (2 * LANES))
        a_even = builder.and_(a, low_bytes)
        a_odd = builder.and_(builder.lshr(a, ir.Constant(_VI, [8] * LANES)), low_bytes)
        b16 = builder.bitcast(b, words)
        b_even = builder.ashr(builder.shl(b16, eight), eight)
        b_odd = builder.ashr(b16, eight)
        total = acc
        for x, y in ((a_even, b_even), (a_odd, b_odd)):
            total = builder.add(total, _pmaddwd16(builder, builder.bitcast(x, words), y))
        return total
    bytes64, wide = ir.VectorType(ir.IntType(8), 4 * LANES), ir.VectorType(_I32, 4 * LANES)
    products = builder.mul(builder.zext(builder.bitcast(a, bytes64), wide),
                           builder.sext(builder.bitcast(b, bytes64), wide))
    total = acc
    for j in range(4):  # byte j of every group of four
        pick = ir.Constant(ir.VectorType(_I32, LANES), [4 * i + j for i in range(LANES)])
        total = builder.add(total, builder.shuffle_vector(products, products, pick))
    return total


def _avx_vnni_dpbusd(builder, acc, a, b):  # type: ignore[no-untyped-def]
    """`vpdpbusd` on the two 256-bit halves (AVX-VNNI's VEX form: the same bits as the 512-bit one)."""
    half = ir.VectorType(_I32, 8)
    halves = []
    for h in range(2):
        pick = ir.Constant(ir.VectorType(_I32, 8), list(range(8 * h, 8 * (h + 1))))
        operands = [builder.shuffle_vector(v, v, pick) for v in (acc, a, b)]
        halves.append(_call_intrinsic(builder, "llvm.x86.avx512.vpdpbusd.256", half, operands))
    return builder.shuffle_vector(halves[0], halves[1], ir.Constant(ir.VectorType(_I32, LANES), list(range(LANES))))


def _pmaddwd16(builder, x, y):  # type: ignore[no-untyped-def]
    """`vpmaddwd` over 32 int16 lanes as two ymm halves: 16 int32 sums of adjacent products."""
    halves = []
    for h in range(2):
        pick = ir.Constant(ir.VectorType(_I32, LANES), list(range(LANES * h, LANES * (h + 1))))
        halves.append(_call_intrinsic(builder, "llvm.x86.avx2.pmadd.wd", ir.VectorType(_I32, 8),
                                      [builder.shuffle_vector(x, x, pick), builder.shuffle_vector(y, y, pick)]))
    return builder.shuffle_vector(halves[0], halves[1], ir.Constant(ir.VectorType(_I32, LANES), list(range(LANES))))


class _BFloatType(ir.Type):
    """LLVM's `bfloat` (llvmlite has no such type; LLVM 17+ intrinsics take `<32 x bfloat>`)."""

    def _to_string(self) -> str:
        return "bfloat"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _BFloatType)

    def __hash__(self) -> int:
        return hash("bfloat")


_VBF = ir.VectorType(_BFloatType(), 2 * LANES)


@intrinsic
def vdpbf16ps(typingctx, acc, a, b):
    """AVX512-BF16: acc + a.bf16[2i] * b.bf16[2i] + a.bf16[2i+1] * b.bf16[2i+1] per float32 lane i
    (`vdpbf16ps`); `a` and `b` hold bf16 pairs as int32 lanes (low half = even element)."""
    if not (isinstance(acc, Vec16f) and isinstance(a, Vec16i) and isinstance(b, Vec16i)):
        return None

    def codegen(context, builder, sig, args):
        acc_v, a_v, b_v = args
        if not host_target().avx512_bf16:  # the engine refuses bf16 there; a direct call gets a clear error
            raise RuntimeError("vdpbf16ps needs AVX512-BF16, which the target CPU lacks")
        return _call_intrinsic(builder, "llvm.x86.avx512bf16.dpbf16ps.512", _VF,
                               [acc_v, builder.bitcast(a_v, _VBF), builder.bitcast(b_v, _VBF)])
    return vec16f(acc, a, b), codegen


@intrinsic
def vcvt_i2f(typingctx, v):
    """Convert 16 x i32 to 16 x float32."""
    if not isinstance(v, Vec16i):
        return None

    def codegen(context, builder, sig, args):
        return builder.sitofp(args[0], _VF)
    return vec16f(v), codegen


@intrinsic
def vfloor(typingctx, v):
    """Lane-wise floor."""
    if not isinstance(v, Vec16f):
        return None

    def codegen(context, builder, sig, args):
        return _call_intrinsic(builder, "llvm.floor.v16f32", _VF, list(args))
    return vec16f(v), codegen


@intrinsic
def vscalef(typingctx, v, n):
    """v * 2**floor(n) lane-wise (`vscalefps`: exact, with IEEE overflow to inf and gradual underflow)."""
    if not (isinstance(v, Vec16f) and isinstance(n, Vec16f)):
        return None

    def codegen(context, builder, sig, args):
        if host_target().avx512:
            return _call_intrinsic(builder, "llvm.x86.avx512.mask.scalef.ps.512", _VF,
                                   [args[0], args[1], ir.Constant(_VF, None), ir.Constant(ir.IntType(16), 0xFFFF),
                                    ir.Constant(_I32, 4)])
        return _portable_scalef(builder, args[0], args[1])
    return vec16f(v, n), codegen


def _portable_scalef(builder, v, n):  # type: ignore[no-untyped-def]
    """v * 2**floor(n) in plain vector IR, for floor(n) in [-252, 254] (what `vexp` passes): two exact
    multiplies by powers of two, each built from its exponent bits, so overflow still gives inf."""
    k = builder.fptosi(_call_intrinsic(builder, "llvm.floor.v16f32", _VF, [n]), _VI)
    lo, hi = ir.Constant(_VI, [-252] * LANES), ir.Constant(_VI, [254] * LANES)
    k = builder.select(builder.icmp_signed("<", k, lo), lo, k)
    k = builder.select(builder.icmp_signed(">", k, hi), hi, k)
    half = builder.ashr(k, ir.Constant(_VI, [1] * LANES))  # floor(k / 2)
    rest = builder.sub(k, half)

    def power_of_two(e):  # type: ignore[no-untyped-def]
        biased = builder.add(e, ir.Constant(_VI, [127] * LANES))
        return builder.bitcast(builder.shl(biased, ir.Constant(_VI, [23] * LANES)), _VF)

    return builder.fmul(builder.fmul(v, power_of_two(rest)), power_of_two(half))


# ----------------------------------------------------------------------------------------------
# vector math built on the intrinsics


@njit(inline="always", cache=True)
def verf(x: Vec16f) -> Vec16f:
    """erf(x), rational approximation on [-4, 4] (Eigen/XLA float32 erf; abs error ~1e-7)."""
    xc = vmin(vmax(x, vbroadcast(-4.0)), vbroadcast(4.0))
    x2 = vmul(xc, xc)
    p = vbroadcast(-2.72614225801306e-10)
    p = vfma(x2, p, vbroadcast(2.77068142495902e-08))
    p = vfma(x2, p, vbroadcast(-2.10102402082508e-06))
    p = vfma(x2, p, vbroadcast(-5.69250639462346e-05))
    p = vfma(x2, p, vbroadcast(-7.34990630326855e-04))
    p = vfma(x2, p, vbroadcast(-2.95459980854025e-03))
    p = vfma(x2, p, vbroadcast(-1.60960333262415e-02))
    p = vmul(xc, p)
    q = vbroadcast(-1.45660718464996e-05)
    q = vfma(x2, q, vbroadcast(-2.13374055278905e-04))
    q = vfma(x2, q, vbroadcast(-1.68282697438203e-03))
    q = vfma(x2, q, vbroadcast(-7.37332916720468e-03))
    q = vfma(x2, q, vbroadcast(-1.42647390514189e-02))
    return vdiv(p, q)


@njit(inline="always", cache=True)
def vtanh(x: Vec16f) -> Vec16f:
    """tanh(x), rational approximation clamped to ±7.9988 (Eigen float32 tanh; abs error ~1e-7)."""
    xc = vmin(vmax(x, vbroadcast(-7.99881172180175781)), vbroadcast(7.99881172180175781))
    x2 = vmul(xc, xc)
    p = vbroadcast(-2.76076847742355e-16)
    p = vfma(x2, p, vbroadcast(2.00018790482477e-13))
    p = vfma(x2, p, vbroadcast(-8.60467152213735e-11))
    p = vfma(x2, p, vbroadcast(5.12229709037114e-08))
    p = vfma(x2, p, vbroadcast(1.48572235717979e-05))
    p = vfma(x2, p, vbroadcast(6.37261928875436e-04))
    p = vfma(x2, p, vbroadcast(4.89352455891786e-03))
    p = vmul(xc, p)
    q = vbroadcast(1.19825839466702e-06)
    q = vfma(x2, q, vbroadcast(1.18534705686654e-04))
    q = vfma(x2, q, vbroadcast(2.26843463243900e-03))
    q = vfma(x2, q, vbroadcast(4.89352518554385e-03))
    r = vdiv(p, q)
    # tiny |x|: tanh(x) = x to float32 precision (and avoids 0/0 concerns)
    return vblend_lt(vabs(x), vbroadcast(0.0004), x, r)


@njit(inline="always", cache=True)
def vexp(x: Vec16f) -> Vec16f:
    """exp(x), relative error ~2e-7: x = n ln2 + r (Cody-Waite, |r| <= ln2/2), Cephes' polynomial for
    e^r in Horner form, times 2^n by `vscalefps`; exactly 0 below -87 (results stay normal: on Intel a
    result that underflows to a denormal or to 0 costs a microcode assist, and in masked attention
    every masked key's exp(-inf) took one: 2.4x slower at batch 16), inf above 88.7; NaN is not
    propagated: softmax callers handle NaN rows themselves."""
    lo = vbroadcast(-87.0)
    xc = vmin(vmax(x, lo), vbroadcast(89.0))
    n = vfloor(vfma(xc, vbroadcast(1.44269504088896341), vbroadcast(0.5)))
    r = vfma(n, vbroadcast(-0.693359375), xc)
    r = vfma(n, vbroadcast(2.12194440e-4), r)
    p = vfma(vbroadcast(1.9875691500e-4), r, vbroadcast(1.3981999507e-3))
    p = vfma(p, r, vbroadcast(8.3334519073e-3))
    p = vfma(p, r, vbroadcast(4.1665795894e-2))
    p = vfma(p, r, vbroadcast(1.6666665459e-1))
    p = vfma(p, r, vbroadcast(5.0000001201e-1))
    p = vfma(p, r, vbroadcast(1.0))
    return vblend_lt(x, lo, vzero(), vscalef(vfma(p, r, vbroadcast(1.0)), n))
