"""int8 GEMM on Intel AMX (`tdpbusd`), with the dequantising epilogue of the VNNI GEMM.

Same contract as `gemm_int8.qgemm` (whose `bind_qgemm` calls this for weights packed with
``layout="amx"``): uint8 activations [M, KP] times an int8 weight packed in panels of 32 columns with
K in groups of 4 and zero-padded to KPAD (a multiple of 64), int32 accumulation, then the
epilogue of `tiles.row_epilogue` (zero-point corrections, scale, bias, activation, residual, or
requantisation to 8 bits).

A block is 32 rows x 32 columns: two A tiles (16 rows x 64 K bytes, read straight from the
activation rows, `KP` bytes apart), two B tiles (16 groups of 4 K x 16 columns, 128 bytes apart in
the panel) and four int32 C tiles, so each 64-K step is four `tdpbusd` on four tile loads. The C
tiles go to a per-task 32 x 32 int32 buffer and the epilogue runs on it with AVX-512. Rows past M
are never read: the last block of a short M loads a tile configuration with fewer rows. When KP is
not a multiple of 64 the last K step's A rows are copied into a zero-padded per-task buffer (the
weight is zero there, but the bytes past a row's end belong to the next row, or to no one).

Tasks are (panel, block of row blocks), handed out one at a time as in the VNNI GEMM.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from sparsejit.kernels.codegen import load_generated_once
from sparsejit.kernels.gemm import _ACT_FN
from sparsejit.kernels.simd_amx import require_amx, tile_config_bytes
from sparsejit.kernels.tiles import epilogue_setup, panel_driver, row_epilogue, split_last_panel

__all__ = ["AMX_MR", "AMX_NR", "amx_kernel", "amx_tile_configs"]

AMX_MR = 32  # rows per block: two 16-row tiles
AMX_NR = 32  # columns per panel: two 16-column tiles
_HERE = Path(__file__)
_DEPS = hashlib.sha1(b"".join(p.read_bytes() for p in (
    _HERE, _HERE.with_name("simd.py"), _HERE.with_name("simd_int8.py"), _HERE.with_name("simd_amx.py"),
    _HERE.with_name("tiles.py"), _HERE.with_name("gemm.py")))).hexdigest()[:12]

# tiles: C 0 1 (rows 0-15) / 2 3 (rows 16-31), A 4 (rows 0-15) / 5 (rows 16-31), B 6 7 (column halves)
_C_TOP, _C_BOTTOM, _A, _B = (0, 1), (2, 3), (4, 5), (6, 7)
_STEP_BYTES = 16 * 4 * AMX_NR  # one 64-K step of a panel: two B tiles
_PREFETCH_STEPS = 4


@functools.lru_cache(maxsize=256)
def amx_tile_configs(m: int) -> np.ndarray:
    """uint8 [128]: the tile configuration of a full 32-row block, then that of M's last block (one
    array shared by every caller: not to be written)."""
    def config(rows: int) -> np.ndarray:
        top, bottom = min(16, rows), max(0, rows - 16)
        shape = {t: top for t in (*_C_TOP, _A[0])} | {t: 16 for t in _B}
        if bottom:
            shape |= {t: bottom for t in (*_C_BOTTOM, _A[1])}
        return tile_config_bytes(shape, {t: 64 for t in shape})
    last = m - AMX_MR * ((m - 1) // AMX_MR) if m else AMX_MR
    return np.concatenate([config(AMX_MR), config(last)])


def _k_steps(lines: list[str], two: bool, indent: str, ktail: int) -> None:
    """The K loop of one block (one or two 16-row halves), then the tail step from `abuf`."""
    halves = ((_A[0], _C_TOP), (_A[1], _C_BOTTOM)) if two else ((_A[0], _C_TOP),)
    lines += [f"{indent}tile_zero({c})" for _, cs in halves for c in cs]
    lines.append(f"{indent}for s in range(KFULL):")
    ind = indent + "    "
    # the weight panel streams from memory at batch 1: ask for it _PREFETCH_STEPS ahead (measured:
    # every block, not only a task's first, and every line of the step)
    lines += [f"{ind}vprefetch(bp, bo + {_PREFETCH_STEPS * _STEP_BYTES + 64 * j})" for j in range(_STEP_BYTES // 64)]
    lines += [f"{ind}tile_load({_B[0]}, bp, bo, {4 * AMX_NR})", f"{ind}tile_load({_B[1]}, bp, bo + 64, {4 * AMX_NR})"]
    for h, (a, (c0, c1)) in enumerate(halves):
        lines += [f"{ind}tile_load({a}, a, ao + {16 * h} * KP, KP)",
                  f"{ind}tile_dpbusd({c0}, {a}, {_B[0]})", f"{ind}tile_dpbusd({c1}, {a}, {_B[1]})"]
    lines += [f"{ind}ao += 64", f"{ind}bo += {_STEP_BYTES}"]
    if ktail:
        rows = "nrows" if two else "min(nrows, 16)"
        lines += [f"{indent}for r in range({rows}):", f"{indent}    for j in range({ktail}):",
                  f"{indent}        abuf[r * 64 + j] = a[ao + r * KP + j]",
                  f"{indent}tile_load({_B[0]}, bp, bo, {4 * AMX_NR})",
                  f"{indent}tile_load({_B[1]}, bp, bo + 64, {4 * AMX_NR})"]
        for h, (a, (c0, c1)) in enumerate(halves):
            lines += [f"{indent}tile_load({a}, abuf, {1024 * h}, 64)",
                      f"{indent}tile_dpbusd({c0}, {a}, {_B[0]})", f"{indent}tile_dpbusd({c1}, {a}, {_B[1]})"]
    for h, (_, (c0, c1)) in enumerate(halves):
        lines += [f"{indent}tile_store({c0}, cbuf, {512 * h}, {4 * AMX_NR})",
                  f"{indent}tile_store({c1}, cbuf, {512 * h + 16}, {4 * AMX_NR})"]


def _gen_source(k: int, kp: int, n: int, act: str | None, out_q: bool, nt: bool) -> str:
    nv = AMX_NR // 16
    kpad = 64 * -(-kp // 64)
    kfull, ktail = kp // 64, kp % 64
    n_pan = max(1, -(-n // AMX_NR))
    last_w = n - (n_pan - 1) * AMX_NR
    L: list[str] = []
    emit = L.append
    emit(f"# Generated by sparsejit.kernels.gemm_amx: K={k} KP={kp} N={n} act={act} out_q={out_q} nt={nt} "
         f"deps={_DEPS}")
    emit("import numpy as np")
    emit("from numba import njit, prange")
    emit("from sparsejit.kernels.simd import (vadd, vbroadcast, vcvt_i2f, vfma, vibroadcast, viload, vload,"
         " vload_mask, vmax, vmin, vmul, vprefetch, vsfence, vstore, vstore_mask, vstore_nt, viadd)")
    emit("from sparsejit.kernels.simd_int8 import visub, vimul, vimax, vimin, vrint, vcvt_f2i, vstore_bytes_mask")
    emit("from sparsejit.kernels.simd_amx import tile_config, tile_dpbusd, tile_load, tile_release, tile_store,"
         " tile_zero")
    if act is not None:
        emit(f"from sparsejit.kernels.gemm import {_ACT_FN[act]} as _act")
    emit("")
    emit(f"K = {k}\nKP = {kp}\nKPAD = {kpad}\nKFULL = {kfull}\nN = {n}\nMR = {AMX_MR}\nNR = {AMX_NR}\n"
         f"NPAN = {n_pan}\n")
    emit("@njit(cache=True, fastmath=True)")
    emit("def _block(a, bp, out, comp, scale, bias, res, rowsum, zw, cbuf, abuf, i0, nrows, p, has_res, has_zw,"
         " zy, qlo, qhi):")
    emit("    cb = p * NR")
    emit("    ao = i0 * KP")
    emit(f"    bo = p * (KPAD // 4) * {4 * AMX_NR}")
    emit("    if nrows > 16:")
    _k_steps(L, True, "        ", ktail)
    emit("    else:")
    _k_steps(L, False, "        ", ktail)
    L.extend(epilogue_setup(nv, out_q))

    def body(indent: str, width: int) -> None:
        emit(f"{indent}for r in range(nrows):")
        L.extend(row_epilogue(lambda v: f"viload(cbuf, r * NR + {16 * v})", "i0 + r", nv, width, indent + "    ",
                              out_q, act, nt))

    split_last_panel(body, emit, AMX_NR, last_w, n_pan)
    emit("")
    out_t = "uint8[::1]" if out_q else "float32[::1]"
    sig = (f"void(uint8[::1], int8[::1], {out_t}, int32[::1], float32[::1], float32[::1], float32[::1], "
           "int32[::1], int32[::1], uint8[::1], int64, int64, boolean, boolean, int64, int64, int64)")
    per_task = ["cbuf = np.empty(MR * NR, np.int32)",
                f"abuf = np.zeros({2048 if ktail else 1}, np.uint8)",
                "tile_config(cfg, 0)"]
    L.extend(panel_driver(sig, "def amx_qgemm_kernel(a, bp, out, comp, scale, bias, res, rowsum, zw, cfg, M, tpb,"
                               " has_res, has_zw, zy, qlo, qhi):",
                          "nrows = min(MR, M - i0)\n"
                          "if nrows < MR:\n"
                          "    tile_config(cfg, 64)\n"
                          "_block(a, bp, out, comp, scale, bias, res, rowsum, zw, cbuf, abuf, i0, nrows, p, has_res,"
                          " has_zw, zy, qlo, qhi)",
                          per_task=tuple(per_task),
                          after_task=("tile_release()",) + (("vsfence()",) if nt else ())))
    emit("")
    return "\n".join(L)


def amx_kernel(k: int, kp: int, n: int, act: str | None, out_q: bool, nt: bool = False) -> Any:
    """The compiled AMX kernel for (K, KP, N, activation, output kind); see `gemm_int8.bind_qgemm`."""
    require_amx()
    tag = f"amx_qgemm_k{k}_kp{kp}_n{n}_{act or 'id'}_{'q' if out_q else 'nt' if nt else 'f'}"
    return load_generated_once(tag, lambda: _gen_source(k, kp, n, act, out_q, nt)).amx_qgemm_kernel
