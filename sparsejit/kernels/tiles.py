"""Source text of the MR x (16*NV) register tile that every generated GEMM-like kernel shares.

Accumulators are `c{r}_{v}`, B vectors of the current k are `b{v}`, A rows start at `ao{r}`; the
generated module imports `vzero`, `vload_bcast`, `vfma` and `vstore_mask` from `sparsejit.kernels.simd`.
"""

from __future__ import annotations

from collections.abc import Callable


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
