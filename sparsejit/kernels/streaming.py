"""When a kernel should write its float32 output with non-temporal stores (`simd.vstore_nt`).

A kernel writing an output much larger than the caches pays, for every line, a read of that line
into the cache (the write-allocate) and later its eviction: measured on BERT-base int8 products at
batch 16 (outputs of 6-25 MB), 8-10 % of the product's time. Non-temporal stores send whole lines
to memory instead. Below a few MB the next kernel finds the output in cache, so normal stores win.
"""

from __future__ import annotations

import numpy as np

NT_MIN_BYTES = 2 << 20  # measured: 2 MB streams on BERT-base b16 (6 MB outputs) gained, b1 (1.5 MB) unchanged


def streams_output(out: np.ndarray, row_len: int) -> bool:
    """Whether float32 `out`, written in 16-lane vectors at multiples of 16 elements of rows
    `row_len` long, should take non-temporal stores: large enough, and every such vector 64-byte
    aligned (as `vmovntps` requires)."""
    return (out.dtype == np.float32 and out.nbytes >= NT_MIN_BYTES and row_len % 16 == 0
            and out.ctypes.data % 64 == 0)
