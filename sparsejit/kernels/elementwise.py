"""Generated elementwise kernels: any scalar expression over broadcast inputs, parallel over rows.

`elementwise_kernel("{0} + {1}", 2, rank)` returns a Numba kernel `k(x0, x1, out)` whose inputs
are already broadcast to `out.shape` (zero strides allowed) and whose output may be any strided view.
Chains of elementwise ops are fused by composing their expressions before calling this.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sparsejit.kernels.codegen import load_generated

_HEADER = '''import math
import numpy as np
from numba import njit, prange


@njit(inline="always")
def _idiv(a, b):  # integer division truncating toward zero (C semantics, as ONNX runtimes do)
    q = a // b
    if q < 0 and q * b != a:
        q += 1
    return q


@njit(inline="always")
def _ifmod(a, b):  # integer remainder with the sign of the dividend (C fmod)
    return a - b * _idiv(a, b)


@njit(inline="always")
def _max(a, b):  # NaN-propagating maximum
    return a if (a >= b or a != a) else b


@njit(inline="always")
def _min(a, b):  # NaN-propagating minimum
    return a if (a <= b or a != a) else b


@njit(inline="always")
def _softplus(x):
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))

'''


def _source(expr: str, n_inputs: int, rank: int) -> str:
    idx = ", ".join(f"i{d}" for d in range(rank))
    args = ", ".join([f"x{i}" for i in range(n_inputs)] + ["out"])
    body = expr.format(*(f"x{i}[{idx}]" for i in range(n_inputs)))
    lines = [_HEADER, "@njit(parallel=True, cache=True, nogil=True)", f"def kernel({args}):",
             "    s = out.shape"]
    outer = " * ".join(f"s[{d}]" for d in range(rank - 1))
    lines.append(f"    for t in prange({outer}):")
    for d in range(rank - 1):
        below = " * ".join(f"s[{e}]" for e in range(d + 1, rank - 1)) or "1"
        lines.append(f"        i{d} = (t // ({below})) % s[{d}]")
    lines.append(f"        for i{rank - 1} in range(s[{rank - 1}]):")
    lines.append(f"            out[{idx}] = {body}")
    return "\n".join(lines) + "\n"


def elementwise_kernel(expr: str, n_inputs: int, rank: int) -> Callable[..., None]:
    """Compile (or load from cache) the kernel for `expr` at `rank` (≥ 2) dimensions."""
    if rank < 2:
        raise ValueError("elementwise kernels work on rank ≥ 2 views; reshape first")
    return load_generated("ew", _source(expr, n_inputs, rank)).kernel


def as_rank2(arrays: list[np.ndarray], out: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """View rank-0/1 operands as rank 2 so every kernel has an outer parallel loop."""
    if out.ndim >= 2:
        return arrays, out
    shape = (1, out.size) if out.ndim == 1 else (1, 1)
    return [a.reshape(shape) for a in arrays], out.reshape(shape)
