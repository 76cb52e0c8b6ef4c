"""Fused multi-head attention over projections in their own [batch, seq, heads*head_size] layout.

Q, K and V are flat arrays read with their own row strides (`ldq`, `ldk`, `ldv` elements), so they may
be separate [batch, seq, width] tensors (stride = width) or column ranges of one packed
[batch, seq, 3*width] projection (stride 3*width, the K and V arrays starting `width` and `2*width`
elements in); the output is [batch, sq, width].

One task per (batch, head): Kᵀ of the head is packed once into zero-padded panels (16 x 16 blocks
transposed in registers), then blocks of twelve query rows get their scores (explicit 16-lane FMAs,
twelve rows sharing each Kᵀ load) with the scale, the additive bias row (masks, position biases) and
the key padding applied as they are stored; then per row its max and the softmax numerator
exp(s - max) and the weighted sum of V, read in place. The 1 / sum of the softmax is
applied to the output row, not to every probability. Scores exist one row block at a time, never as
a [batch, heads, seq, seq] tensor. The kernel is generated per head size (its accumulators are
unrolled) and cached like every generated kernel.
"""

from __future__ import annotations

import numpy as np

from sparsejit.kernels.codegen import load_generated
from sparsejit.kernels.target import host_target

HEAD_MULTIPLE = 16  # head sizes the kernel runs: whole 16-lane vectors of a head's columns


def _register_budget() -> tuple[int, int]:
    """(query rows per block, accumulators of a P·V tile) that fit the target's vector registers:
    a QKᵀ tile of 12 rows x 32 keys is 24 zmm; on AVX2 every 16-lane vector is two of 16 ymm."""
    return (12, 24) if host_target().avx512 else (6, 6)


def _source(d: int, block_rows: int, pv_accumulators: int, fake_quant: bool = False) -> str:
    nv = d // 16
    pv_rows = max(1, min(block_rows, pv_accumulators // nv))
    lines = ["import math",
             "import numpy as np",
             "from numba import njit, prange",
             "from sparsejit.kernels.simd import (vadd, vblend_lt, vbroadcast, vexp, vfma, vhsum, vload,",
             "                                    vload_bcast, vload_mask, vmax, vmul, vstore, vsub,",
             "                                    vtranspose16, vzero)",
             "from sparsejit.kernels.normalization import _hmax",
             "from sparsejit.kernels.simd_int8 import vfake_quant as _fq",
             "",
             "LANE = np.arange(16, dtype=np.float32)",
             "",
             "",
             "@njit(parallel=True, cache=True, nogil=True)",
             "def attention(qf, kf, vf, ldq, ldk, ldv, batch, sq, sk, bias, sb, sh, si, scale, nan_to_zero,"
             " heads, out, fq, masked_fill):",
             f"    width = heads * {d}",
             f"    d = {d}",
             "    skp = (sk + 31) // 32 * 32",
             "    of = out.reshape(-1)",
             "    bf = bias.reshape(-1)",
             "    lane = vload(LANE, 0)",
             "    ninf = vbroadcast(-np.inf)",
             "    for task in prange(batch * heads):",
             "        bi = task // heads",
             "        hi = task - bi * heads",
             "        off = hi * d",
             "        kt = np.empty(d * skp, dtype=np.float32)",
             "        for j0 in range(0, skp, 16):  # K^T of the head, keys past sk zero",
             "            for e0 in range(0, d, 16):",
             "                vtranspose16(kf, (bi * sk + j0) * ldk + off + e0, ldk, sk - j0, kt, e0 * skp + j0,",
             "                             skp)",
             f"        sc = np.empty({block_rows} * skp, dtype=np.float32)",
             f"        inv = np.empty({block_rows}, dtype=np.float32)",
             "        vscale = vbroadcast(scale)",
             f"        for i0 in range(0, sq, {block_rows}):",
             f"            rows = min({block_rows}, sq - i0)",
             ]
    for r in range(block_rows):
        lines.append(f"            qo{r} = (bi * sq + min(i0 + {r}, sq - 1)) * ldq + off")
        lines.append(f"            bb{r} = bi * sb + hi * sh + min(i0 + {r}, sq - 1) * si")
    lines.append("            for jb in range(0, skp, 32):")
    lines.append("                n0 = min(max(sk - jb, 0), 16)")
    lines.append("                n1 = min(max(sk - jb - 16, 0), 16)")
    lines.append("                lim0 = vbroadcast(n0)")
    lines.append("                lim1 = vbroadcast(n1)")
    for r in range(block_rows):
        lines.append(f"                a{r} = vzero()")
        lines.append(f"                b{r} = vzero()")
    lines.append("                for e in range(d):")
    lines.append("                    kv = vload(kt, e * skp + jb)")
    lines.append("                    kw = vload(kt, e * skp + jb + 16)")
    for r in range(block_rows):
        lines.append(f"                    qb = vload_bcast(qf, qo{r} + e)")
        lines.append(f"                    a{r} = vfma(qb, kv, a{r})")
        lines.append(f"                    b{r} = vfma(qb, kw, b{r})")
    # scale, additive bias (masks, position terms) and key padding (-inf) applied as the scores are
    # stored (the row max is taken in the softmax pass: kept here it would cost 12 registers)
    for r in range(block_rows):
        if fake_quant:  # fq 0: the raw scores; fq 1: after the additive terms
            for dst, acc, off, lim in (("x", f"a{r}", "", "n0"), ("y", f"b{r}", " + 16", "n1")):
                lines.append(f"                {dst} = _fq(vadd(_fq(vmul({acc}, vscale), fq, 0),"
                             f" vload_mask(bf, bb{r} + jb{off}, {lim})), fq, 1)")
        else:
            lines.append(f"                x = vfma(a{r}, vscale, vload_mask(bf, bb{r} + jb, n0))")
            lines.append(f"                y = vfma(b{r}, vscale, vload_mask(bf, bb{r} + jb + 16, n1))")
        lines.append(f"                vstore(sc, {r} * skp + jb, vblend_lt(lane, lim0, x, ninf))")
        lines.append(f"                vstore(sc, {r} * skp + jb + 16, vblend_lt(lane, lim1, y, ninf))")
    lines += [
        "            for r in range(rows):",
        "                row = r * skp",
        "                vm = ninf",
        "                for jb in range(0, skp, 16):",
        "                    vm = vmax(vm, vload(sc, row + jb))",
        "                m = _hmax(vm, True)",
        "                if m == -np.inf or m != m:  # every key masked: the row is 0 (or NaN, as ONNX)",
        "                    vfill = vbroadcast(masked_fill)",
        "                    for jb in range(0, skp, 16):",
        "                        vstore(sc, row + jb, vfill)",
        "                    inv[r] = 1.0",
        "                    continue",
        "                vmb = vbroadcast(m)",
        "                vs = vzero()",
        "                for jb in range(0, skp, 16):",
        "                    ev = vexp(vsub(vload(sc, row + jb), vmb))",
        "                    vstore(sc, row + jb, ev)",
        "                    vs = vadd(vs, ev)",
        "                inv[r] = np.float32(1.0) / vhsum(vs)  # applied to the P·V output row",
    ]
    if fake_quant:  # P itself is quantised (fq 2, then NaN -> 0 when asked, then fq 3) before P·V
        lines += [
            "                vinv = vbroadcast(inv[r])",
            "                zero = vzero()",
            "                pinf = vbroadcast(np.inf)",
            "                for jb in range(0, skp, 16):",
            "                    pv = _fq(vmul(vload(sc, row + jb), vinv), fq, 2)",
            "                    if nan_to_zero:  # NaN -> 0 (a probability is never +inf)",
            "                        pv = vblend_lt(pv, pinf, pv, zero)",
            "                    vstore(sc, row + jb, _fq(pv, fq, 3))",
            "                inv[r] = 1.0",
        ]
    # P @ V for the whole row block: each V load serves every row of the tile
    lines.append(f"            for r0 in range(0, rows, {pv_rows}):")
    for r in range(pv_rows):
        for c in range(nv):
            lines.append(f"                o{r}_{c} = vzero()")
    lines.append("                for j in range(sk):")
    lines.append("                    vrow = (bi * sk + j) * ldv + off")
    for c in range(nv):
        lines.append(f"                    w{c} = vload(vf, vrow + {16 * c})")
    for r in range(pv_rows):
        lines.append(f"                    p{r} = vload_bcast(sc, min(r0 + {r}, rows - 1) * skp + j)")
        for c in range(nv):
            lines.append(f"                    o{r}_{c} = vfma(p{r}, w{c}, o{r}_{c})")
    for r in range(pv_rows):
        lines.append(f"                if r0 + {r} < rows:")
        lines.append(f"                    obase = (bi * sq + i0 + r0 + {r}) * width + off")
        lines.append(f"                    vi = vbroadcast(inv[r0 + {r}])")
        for c in range(nv):
            lines.append(f"                    vstore(of, obase + {16 * c}, vmul(o{r}_{c}, vi))")
    return "\n".join(lines) + "\n"


def attention_kernel(head_size: int, block_rows: int | None = None, fake_quant: bool = False):
    """The compiled kernel for `head_size` (a multiple of `HEAD_MULTIPLE`) and query rows per block
    (default: what the target's registers hold). `fake_quant`: the variant that rounds the scores, the
    scores plus terms, the probabilities and the NaN-cleared probabilities to the quantisation grids in
    its `fq` argument (float32 [16]: per point scale, lowest, highest, unused; scale 0 = not rounded), as
    a QDQ graph's Q -> DQ pairs at those points do."""
    if head_size % HEAD_MULTIPLE:
        raise ValueError(f"generated attention needs a head size that is a multiple of {HEAD_MULTIPLE}")
    rows, pv_accumulators = _register_budget()
    rows = rows if block_rows is None else block_rows
    return load_generated(f"attention_d{head_size}_r{rows}_pv{pv_accumulators}{'_fq' if fake_quant else ''}",
                          _source(head_size, rows, pv_accumulators, fake_quant)).attention


Operands = tuple[np.ndarray, np.ndarray, np.ndarray, int, int, int, int, int, int]


def qkv_operands(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> Operands:
    """The kernel's (qf, kf, vf, ldq, ldk, ldv, batch, sq, sk) for separate C-contiguous
    [batch, sq|sk, width] projections (flat views: the kernel reads their current contents)."""
    batch, sq, width = q.shape
    if k.shape != v.shape or k.shape[0] != batch or k.shape[2] != width:
        raise ValueError(f"q {q.shape}, k {k.shape} and v {v.shape} do not fit one attention")
    if not all(t.flags.c_contiguous and t.dtype == np.float32 for t in (q, k, v)):
        raise ValueError("q, k and v must be C-contiguous float32 arrays (views of them are read in place)")
    return q.reshape(-1), k.reshape(-1), v.reshape(-1), width, width, width, batch, sq, k.shape[1]


def packed_qkv_operands(qkv: np.ndarray) -> Operands:
    """The kernel's operands for one C-contiguous [batch, seq, 3*width] projection holding Q, K and V
    side by side (views into it: nothing is copied)."""
    batch, seq, width3 = qkv.shape
    if width3 % 3 or not qkv.flags.c_contiguous or qkv.dtype != np.float32:
        raise ValueError(f"expected a C-contiguous float32 [batch, seq, 3*width] array, got {qkv.dtype} {qkv.shape}")
    w = width3 // 3
    flat = qkv.reshape(-1)
    return flat, flat[w:], flat[2 * w:], width3, width3, width3, batch, seq, seq


def bias_strides(bias: np.ndarray) -> tuple[int, int, int]:
    """Element strides of a C-contiguous [b|1, h|1, sq|1, sk] bias for batch, head and row (0 = broadcast)."""
    b, h, s, k = bias.shape
    return (0 if b == 1 else h * s * k), (0 if h == 1 else s * k), (0 if s == 1 else k)
