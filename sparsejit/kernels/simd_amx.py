"""Intel AMX tile intrinsics for Numba, and whether this process may use them.

AMX (Sapphire Rapids and later) adds eight tile registers of up to 16 rows x 64 bytes and
`tdpbusd`, which multiplies a 16 x 64 uint8 tile by a 16 x 64 int8 tile holding K in groups of 4
(the layout `vpdpbusd` consumes) into a 16 x 16 int32 tile: 16 K of work per instruction where one
`vpdpbusd` does 1. LLVM exposes the instructions with immediate tile numbers; these intrinsics take
the tile numbers as literal ints (a generated kernel writes them as constants):

    tile_config(cfg, off)          `ldtilecfg` from the 64 bytes of uint8 `cfg` at `off` (see
                                   `tile_config_bytes`); zeroes every tile
    tile_zero(t)                   tile t = 0
    tile_load(t, arr, off, stride) tile t = rows of arr from element `off`, `stride` bytes apart
    tile_store(t, arr, off, stride)
    tile_dpbusd(c, a, b)           c += a (uint8) . b (int8, K in groups of 4), int32
    tile_release()                 return the tiles to their init state (cheaper context switches)

Linux hands AMX state to a process only after it asks (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); an AMX
instruction before that is a SIGILL. `amx_usable()` asks once and says whether the CPU, the kernel
and LLVM all allow it; `SPARSEJIT_AMX=0` turns the AMX kernels off.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from sparsejit.kernels.target import host_target

__all__ = ["amx_usable", "require_amx", "tile_config_bytes", "tile_config", "tile_zero", "tile_load", "tile_store",
           "tile_dpbusd", "tile_release", "ENV_AMX"]

ENV_AMX = "SPARSEJIT_AMX"
_SYS_ARCH_PRCTL = 158  # x86_64
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18
_I8 = ir.IntType(8)
_I64 = ir.IntType(64)


def _host_has_amx() -> bool:
    return host_target().amx_int8


@functools.cache
def _permission() -> bool:
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA)) == 0
    except (OSError, AttributeError):
        return False


def amx_usable() -> bool:
    """True when the AMX int8 kernels may run here (CPU, OS permission granted, not disabled)."""
    if os.environ.get(ENV_AMX, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return _host_has_amx() and _permission()


def require_amx() -> None:
    """Ask for AMX state (needed before any AMX instruction runs); RuntimeError where it cannot run."""
    if not (_host_has_amx() and _permission()):
        raise RuntimeError("AMX int8 is not available here (CPU without AMX, or the OS refused it)")


def tile_config_bytes(rows: dict[int, int], colsb: dict[int, int]) -> np.ndarray:
    """The 64-byte `ldtilecfg` operand (palette 1) for tiles given as {tile: rows} and
    {tile: bytes per row}; tiles not named stay unconfigured (and must not be used)."""
    cfg = np.zeros(64, np.uint8)
    cfg[0] = 1
    cb = cfg[16:48].view(np.uint16)
    for t, r in rows.items():
        if not (0 <= t < 8 and 0 < r <= 16 and 0 < colsb[t] <= 64):
            raise ValueError(f"bad tile shape for tile {t}: {r} rows x {colsb.get(t)} bytes")
        cfg[48 + t] = r
        cb[t] = colsb[t]
    return cfg


def _call(builder, name, args):  # type: ignore[no-untyped-def]
    fnty = ir.FunctionType(ir.VoidType(), [a.type for a in args])
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), args)


def _byte_ptr(context, builder, aryty, ary, off):  # type: ignore[no-untyped-def]
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.bitcast(builder.gep(data, [off], inbounds=True), _I8.as_pointer())


def _literal_tiles(*tys: types.Type) -> bool:
    return all(isinstance(t, types.IntegerLiteral) and 0 <= t.literal_value < 8 for t in tys)


def _tile(ty: types.IntegerLiteral) -> ir.Constant:
    return ir.Constant(_I8, ty.literal_value)


@intrinsic
def tile_config(typingctx, cfg, off):
    """`ldtilecfg` from uint8 `cfg[off:off+64]`."""
    if not (isinstance(cfg, types.Array) and cfg.dtype == types.uint8 and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.ldtilecfg", [_byte_ptr(context, builder, sig.args[0], args[0], args[1])])
    return types.void(cfg, off), codegen


@intrinsic
def tile_release(typingctx):
    """`tilerelease`."""
    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tilerelease", [])
    return types.void(), codegen


@intrinsic
def tile_zero(typingctx, t):
    """`tilezero` of the literal tile t."""
    if not _literal_tiles(t):
        return None

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tilezero", [_tile(sig.args[0])])
    return types.void(t), codegen


def _make_move(name: str, doc: str):  # type: ignore[no-untyped-def]
    def impl(typingctx, t, arr, off, stride):
        if not (_literal_tiles(t) and isinstance(arr, types.Array) and isinstance(off, types.Integer)
                and isinstance(stride, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            stride64 = context.cast(builder, args[3], sig.args[3], types.int64)
            _call(builder, name, [_tile(sig.args[0]), _byte_ptr(context, builder, sig.args[1], args[1], args[2]),
                                  stride64])
        return types.void(t, arr, off, stride), codegen
    impl.__doc__ = doc
    return intrinsic(impl)


tile_load = _make_move("llvm.x86.tileloadd64", "`tileloadd`: tile t from arr[off:], rows `stride` bytes apart.")
tile_store = _make_move("llvm.x86.tilestored64", "`tilestored`: tile t to arr[off:], rows `stride` bytes apart.")


@intrinsic
def tile_dpbusd(typingctx, c, a, b):
    """`tdpbusd`: tile c += tile a (uint8 rows) . tile b (int8, K in groups of 4), int32."""
    if not _literal_tiles(c, a, b):
        return None

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tdpbusd", [_tile(s) for s in sig.args])
    return types.void(c, a, b), codegen
