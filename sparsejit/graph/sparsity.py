"""Weight sparsity analysis: how sparse each constant weight is, and how its zeros are arranged.

Block shapes are written ``RxC`` on the [K, N] weight of ``y = x @ W``: ``1x16`` is one input row k
times 16 consecutive output columns (what the block-sparse fp32 kernels want), ``4x1`` four
consecutive inputs of one output (what int8 VNNI kernels want). The *density* of a block shape is the
fraction of blocks holding at least one non-zero: a block kernel stores and multiplies exactly that
fraction, so density near 1 - sparsity means the zeros are already block-structured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sparsejit.graph.ir import Graph

__all__ = ["BLOCK_SHAPES", "WeightSparsity", "analyse_weight", "analyse_graph", "block_density",
           "matmul_weights", "format_report"]

BLOCK_SHAPES = ("1x4", "1x16", "1x32", "1x64", "4x1")


def parse_block(shape: str) -> tuple[int, int]:
    """``"1x16"`` -> (1, 16): (rows along K, columns along N)."""
    try:
        r, c = (int(p) for p in shape.lower().split("x"))
    except ValueError:
        raise ValueError(f"block shape must look like '1x16', got {shape!r}") from None
    if r < 1 or c < 1:
        raise ValueError(f"block shape must be positive, got {shape!r}")
    return r, c


def block_nonzero(w: np.ndarray, shape: str | tuple[int, int]) -> np.ndarray:
    """Boolean [ceil(K/r), ceil(N/c)]: which r x c blocks of w hold a non-zero (edges zero-padded)."""
    r, c = parse_block(shape) if isinstance(shape, str) else shape
    k, n = w.shape
    kb, nb = -(-k // r), -(-n // c)
    nz = w != 0
    if (kb * r, nb * c) != (k, n):
        padded = np.zeros((kb * r, nb * c), dtype=bool)
        padded[:k, :n] = nz
        nz = padded
    return nz.reshape(kb, r, nb, c).any(axis=(1, 3))


def block_density(w: np.ndarray, shape: str | tuple[int, int]) -> float:
    """Fraction of r x c blocks of w with at least one non-zero."""
    blocks = block_nonzero(w, shape)
    return float(blocks.mean()) if blocks.size else 0.0


@dataclass(frozen=True)
class WeightSparsity:
    """Sparsity of one [K, N] weight and the density of each block shape."""

    shape: tuple[int, int]
    sparsity: float
    block_density: dict[str, float] = field(default_factory=dict)

    @property
    def nnz(self) -> int:
        return int(round((1.0 - self.sparsity) * self.shape[0] * self.shape[1]))

    def structure(self, slack: float = 1.05) -> str:
        """The largest block shape whose density is within `slack` of the element density."""
        dense_frac = max(1e-12, 1.0 - self.sparsity)
        best = "unstructured"
        best_size = 1
        for shape, d in self.block_density.items():
            r, c = parse_block(shape)
            if d <= dense_frac * slack and r * c > best_size:
                best, best_size = shape, r * c
        return best


def analyse_weight(w: np.ndarray, shapes: tuple[str, ...] = BLOCK_SHAPES,
                   min_sparsity: float = 0.0) -> WeightSparsity:
    """Sparsity and block densities of a 2-D weight (block analysis skipped below `min_sparsity`)."""
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {w.shape}")
    size = w.size
    sparsity = 1.0 - np.count_nonzero(w) / size if size else 0.0
    dens: dict[str, float] = {}
    if sparsity >= min_sparsity and size:
        dens = {s: block_density(w, s) for s in shapes}
    return WeightSparsity(shape=(int(w.shape[0]), int(w.shape[1])), sparsity=float(sparsity),
                          block_density=dens)


def matmul_weights(graph: Graph) -> dict[str, np.ndarray]:
    """Constant 2-D float weights used as the right operand of MatMul / FusedMatMul / Gemm, as [K, N]."""
    found: dict[str, np.ndarray] = {}
    for node in graph.nodes:
        if node.op_type not in ("MatMul", "FusedMatMul", "Gemm") or len(node.inputs) < 2:
            continue
        w = graph.initializers.get(node.inputs[1])
        if w is None or w.ndim != 2 or not np.issubdtype(w.dtype, np.floating):
            continue
        if node.op_type == "Gemm" and node.attrs.get("transB", 0):
            w = w.T
        found[node.inputs[1]] = w
    return found


def analyse_graph(graph: Graph, min_sparsity: float = 0.0) -> dict[str, WeightSparsity]:
    """`analyse_weight` for every MatMul / Gemm weight of `graph`, by initializer name."""
    return {name: analyse_weight(w, min_sparsity=min_sparsity) for name, w in matmul_weights(graph).items()}


def format_report(stats: dict[str, WeightSparsity]) -> str:
    """A table: name, shape, sparsity, block densities, best structure."""
    shapes = sorted({s for st in stats.values() for s in st.block_density}, key=BLOCK_SHAPES.index)
    head = f"{'weight':<48} {'shape':>11} {'sparsity':>8} " + " ".join(f"{s:>6}" for s in shapes)
    lines = [head + "  structure"]
    for name, st in stats.items():
        dens = " ".join(f"{st.block_density.get(s, float('nan')):6.3f}" for s in shapes)
        lines.append(f"{name[-48:]:<48} {st.shape[0]:>5}x{st.shape[1]:<5} {st.sparsity:8.3f} {dens}  "
                     f"{st.structure()}")
    return "\n".join(lines)
