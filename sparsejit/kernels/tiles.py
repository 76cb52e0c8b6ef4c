"""Source text shared by the generated GEMM-like kernels (fp32, bf16, int8, block-sparse).

The MR x (16*NV) register tile: accumulators are `c{r}_{v}`, B vectors of the current k are `b{v}`,
A rows start at `ao{r}` (`zero_tile`, `fma_tile`, `masked_store_tile` for fp32; `group4_dot_tile` for
the 4-byte-group dot products of bf16 and VNNI). Around it: the float epilogue's tail
(`activate_add_store`; for the int8 kernels the whole dequantising epilogue, `epilogue_setup` and
`row_epilogue`), the full-panel / last-panel split (`split_last_panel`) and the panel-major
`prange` driver (`panel_driver`). The generated module imports the intrinsics each piece names.
"""

from __future__ import annotations

from collections.abc import Callable

# activations with rounding points of their own (3 and 4 of `fq`) when a QDQ graph rounds inside them
_ROUNDED_ACTIVATIONS = {"gelu_erf": "vgelu_erf_rounded"}


def activation_import(act: str, fake_quant: bool, plain: str) -> str:
    """The generated module's import of its activation as `_act`: `plain` (a `kernels.gemm` function
    name) or, in a rounding epilogue, the activation's rounded form from `simd_int8` where it has one."""
    if fake_quant and act in _ROUNDED_ACTIVATIONS:
        return f"from sparsejit.kernels.simd_int8 import {_ROUNDED_ACTIVATIONS[act]} as _act"
    return f"from sparsejit.kernels.gemm import {plain} as _act"


def activation_call(act: str, fake_quant: bool) -> str:
    """The expression applying `_act` (imported by `activation_import`) to `f`."""
    return "_act(f, fq)" if fake_quant and act in _ROUNDED_ACTIVATIONS else "_act(f)"


def zero_tile(mr: int, nv: int, indent: str) -> list[str]:
    """c{r}_{v} = 0 for the whole tile."""
    return [f"{indent}c{r}_{v} = vzero()" for r in range(mr) for v in range(nv)]


def fma_tile(mr: int, nv: int, indent: str) -> list[str]:
    """One k step: broadcast A[r, k] (at `ao{r} + k`) and accumulate c{r}_{v} += a{r} * b{v}."""
    lines = []
    for r in range(mr):
        lines.append(f"{indent}a{r} = vload_bcast(a, ao{r} + k)")
        lines += [f"{indent}c{r}_{v} = vfma(a{r}, b{v}, c{r}_{v})" for v in range(nv)]
    return lines


def masked_store_tile(mr: int, nv: int, address: Callable[[int, int], str], indent: str) -> list[str]:
    """Store every accumulator with lane counts `m{v}`; row r > 0 only when `nrows > r`."""
    lines = []
    for r in range(mr):
        ind = indent
        if r:
            lines.append(f"{indent}if nrows > {r}:")
            ind = indent + "    "
        lines += [f"{ind}vstore_mask(out, {address(r, v)}, c{r}_{v}, m{v})" for v in range(nv)]
    return lines


def split_last_panel(body: Callable[[str, int], None], emit: Callable[[str], None], nr: int, last_w: int,
                     n_pan: int) -> None:
    """Emit `body(indent, width)` once when every panel is NR wide, else for full panels and the last."""
    if last_w == nr or n_pan == 1:
        body("    ", last_w)
    else:
        emit("    if p < NPAN - 1:")
        body("        ", nr)
        emit("    else:")
        body("        ", last_w)


def activate_add_store(act: str | None, v: int, lanes: int, indent: str, store: str = "vstore",
                       round_last: bool = False) -> list[str]:
    """The float epilogue's tail on `f` (vector v of a row at `row`): activation, residual, [rounding
    to fake-quantisation point 2 of `fq`], store (`store` names the full-vector store: `vstore`, or
    `vstore_nt` for 64-byte aligned rows)."""
    lines = [f"{indent}f = {activation_call(act, round_last)}"] if act is not None else []
    lines += [f"{indent}if has_res:", f"{indent}    f = vadd(f, vload_mask(res, row + {16 * v}, {lanes}))"]
    if round_last:
        lines.append(f"{indent}f = vfake_quant(f, fq, 2)")
    if lanes == 16:
        lines.append(f"{indent}{store}(out, row + {16 * v}, f)")
    else:
        lines.append(f"{indent}vstore_mask(out, row + {16 * v}, f, {lanes})")
    return lines


def panel_driver(signature: str, header: str, tile_call: str, per_task: tuple[str, ...] = (),
                 after_task: tuple[str, ...] = ()) -> list[str]:
    """The parallel driver of a panel-major GEMM: one task per (column panel p, block of `tpb` row tiles).

    `header` is the kernel's `def` line; the driver needs `M`, `tpb`, `MR` and `NPAN` in scope.
    `per_task` lines run once per task (they may use `p`), `tile_call` once per row tile (`i0`),
    `after_task` lines once at the end of each task.
    """
    lines = [f'@njit("{signature}", parallel=True, cache=True)', header,
             "    n_mt = (M + MR - 1) // MR",
             "    n_mb = (n_mt + tpb - 1) // tpb",
             "    for t in prange(NPAN * n_mb):",
             "        p = t // n_mb",
             "        mb = t - p * n_mb"]
    lines += [f"        {line}" for line in per_task]
    lines += ["        for mt in range(mb * tpb, min(mb * tpb + tpb, n_mt)):",
              "            i0 = mt * MR"]
    lines += [f"            {line}" for line in tile_call.split("\n")]
    lines += [f"        {line}" for line in after_task]
    return lines


def group4_dot_tile(mr: int, nv: int, nr: int, row_bytes: str, groups: str, zero: str, dot: str) -> list[str]:
    """The k loop of a tile whose dot instruction eats 4-byte groups (`vdpbusd`: 4 x int8,
    `vdpbf16ps`: 2 x bf16): A rows of `row_bytes` bytes (`ao{r}`), the panel `p` of B packed as
    [`groups`][NR lanes][4 bytes]; accumulators `c{r}_{v}` start at `zero` and take `dot(c, a, b)`."""
    lines = [f"    ao{r} = min(i0 + {r}, M - 1) * {row_bytes}" for r in range(mr)]
    lines.append(f"    bo = p * ({row_bytes} * NR)")
    lines += [f"    c{r}_{v} = {zero}" for r in range(mr) for v in range(nv)]
    lines.append(f"    for g in range({groups}):")
    lines += [f"        b{v} = viload(bp, bo + {64 * v})" for v in range(nv)]
    for r in range(mr):
        lines.append(f"        a{r} = vload_bcast4(a, ao{r} + 4 * g)")
        lines += [f"        c{r}_{v} = {dot}(c{r}_{v}, a{r}, b{v})" for v in range(nv)]
    lines.append(f"        bo += {nr * 4}")
    return lines


def epilogue_setup(nv: int, out_q: bool) -> list[str]:
    """Generated-code lines loading the per-column epilogue vectors of panel columns `cb + 16v`
    (`k{v}` comp, `s{v}` scale, `z{v}` weight zero points, `e{v}` bias) and the requantisation
    constants, for `row_epilogue`."""
    lines = []
    for v in range(nv):
        lines += [f"    k{v} = viload(comp, cb + {16 * v})", f"    s{v} = vload(scale, cb + {16 * v})",
                  f"    z{v} = viload(zw, cb + {16 * v})"]
        if not out_q:
            lines.append(f"    e{v} = vload(bias, cb + {16 * v})")
    if out_q:
        lines += ["    zyv = vibroadcast(zy)", "    qlov = vibroadcast(qlo)", "    qhiv = vibroadcast(qhi)",
                  "    flo = vbroadcast(-65536.0)", "    fhi = vbroadcast(65536.0)"]
    return lines


def row_epilogue(acc: Callable[[int], str], row_index: str, nv: int, width: int, ind: str, out_q: bool,
                 act: str | None, nt: bool, fake_quant: bool = False, tail: bool = True) -> list[str]:
    """Generated-code lines finishing one output row (`row_index`) of a panel `width` columns wide from
    its int32 accumulator vectors `acc(v)`: zero-point corrections, dequantisation, then the float
    epilogue (bias, activation, residual) or requantisation to 8 bits, and the stores. `fake_quant`:
    the float epilogue also rounds to the grids of `fq` (`simd_int8.vfake_quant`) where a QDQ graph's
    Q -> DQ pairs do: the product before the bias (point 0), after it (1), and last (2)."""
    lines = [f"{ind}row = ({row_index}) * N + cb", f"{ind}if has_zw:",
             f"{ind}    rs = vibroadcast(rowsum[{row_index}])"]
    for v in range(nv):
        lanes = min(16, width - 16 * v)
        if lanes <= 0:
            continue
        lines += [f"{ind}x = visub({acc(v)}, k{v})", f"{ind}if has_zw:", f"{ind}    x = visub(x, vimul(rs, z{v}))"]
        if out_q:
            lines += [f"{ind}f = vmin(vmax(vrint(vmul(vcvt_i2f(x), s{v})), flo), fhi)",
                      f"{ind}q = vimin(vimax(viadd(vcvt_f2i(f), zyv), qlov), qhiv)",
                      f"{ind}vstore_bytes_mask(out, row + {16 * v}, q, {lanes})"]
            continue
        lines += dequantize_add_bias("x", f"s{v}", f"e{v}", ind, fake_quant)
        if tail:
            lines += activate_add_store(act, v, lanes, ind, "vstore_nt" if nt else "vstore", round_last=fake_quant)
        else:  # the tail runs later, as `deferred_tail`
            lines.append(f"{ind}vstore(out, row + {16 * v}, f)" if lanes == 16
                         else f"{ind}vstore_mask(out, row + {16 * v}, f, {lanes})")
    return lines


def deferred_tail(nv: int, width: int, ind: str, act: str | None, fake_quant: bool) -> list[str]:
    """The float epilogue's tail (`activate_add_store`) over a tile whose rows `row_epilogue(tail=False)`
    stored: a loop over its rows re-reading them from L1, so a long tail (a rounded GELU) is generated
    once, not once per row of the register tile."""
    lines = [f"{ind}for r in range(nrows):", f"{ind}    row = (i0 + r) * N + cb"]
    for v in range(nv):
        lanes = min(16, width - 16 * v)
        if lanes <= 0:
            continue
        lines.append(f"{ind}    f = vload(out, row + {16 * v})" if lanes == 16
                     else f"{ind}    f = vload_mask(out, row + {16 * v}, {lanes})")
        lines += activate_add_store(act, v, lanes, ind + "    ", round_last=fake_quant)
    return lines


def dequantize_add_bias(x: str, s: str, e: str, ind: str, fake_quant: bool) -> list[str]:
    """Generated-code lines setting `f` = float(x) * s + e from the corrected int32 vector `x`; with
    `fake_quant`, rounded where a QDQ graph's Q -> DQ pairs do: the product before the bias (point 0 of
    `fq`, when it has one) and the sum after it (point 1); see `simd_int8.vfake_quant`."""
    if not fake_quant:
        return [f"{ind}f = vfma(vcvt_i2f({x}), {s}, {e})"]
    return [f"{ind}if fq[0] != 0.0:",
            f"{ind}    f = vadd(vfake_quant(vmul(vcvt_i2f({x}), {s}), fq, 0), {e})",
            f"{ind}else:",
            f"{ind}    f = vfma(vcvt_i2f({x}), {s}, {e})",
            f"{ind}f = vfake_quant(f, fq, 1)"]

