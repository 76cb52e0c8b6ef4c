"""What the graph passes need to know about the kernels that will run the graph.

The engine fills a `PassContext` from the kernel modules it will use; graph code never imports
kernels, so kernel limits reach the passes only through this object.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PassContext:
    """Capabilities of the target kernels, as the passes use them."""

    attention_head_multiple: int
    """The fused attention kernel runs heads whose size is a multiple of this (else left unfused)."""

    qkv_merge_max_rows: int | None
    """Merge an attention's Q/K/V int8 products in buckets of at most this many rows (None: every bucket)."""

    int8_fake_quant_epilogue: bool = False
    """The int8 product's epilogue can round its float output to QDQ grids (before and after the bias,
    and last), so a QDQ graph's Q -> DQ pairs around the bias add fuse into it."""
