"""The ordered list of graph passes, and `optimise`, which runs them.

Each pass is a module with `NAME` and `run(graph, ctx) -> graph`; a pass that cannot apply returns the
graph unchanged. After every pass the graph is checked to be well formed (a pass that breaks it is a
bug, reported by name). `SPARSEJIT_DUMP_GRAPHS=DIR` writes the graph after every pass to
`DIR/<n>-<pass>.txt` (one directory per call, numbered), for debugging fusions.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from sparsejit.graph import (
    attention,
    cse,
    elementwise_chains,
    matmul_epilogue,
    qkv_merge,
    quant_fusion,
    redundant_requantize,
    smooth_quant,
)
from sparsejit.graph.ir import Graph
from sparsejit.graph.pass_context import PassContext
from sparsejit.graph.rewrite import check_well_formed

# Order matters: the int8 products must exist before their epilogues fuse and before redundant Q -> DQ
# pairs go (quant_fusion reads the pairs in front of a MatMul); attention reads the fused
# products; Q/K/V merging reads the fused attention; a per-channel Mul folds into the (merged) products'
# quantisers before the elementwise chains could take it; CSE runs before the elementwise chains are
# fused (it does not look inside fused chains).
PASSES = (quant_fusion, redundant_requantize, matmul_epilogue, attention, qkv_merge, smooth_quant, cse,
          elementwise_chains)

_dump_counter = itertools.count()


def optimise(graph: Graph, ctx: PassContext) -> Graph:
    """Run every pass of `PASSES` in order on `graph` (modified in place and returned)."""
    dump = os.environ.get("SPARSEJIT_DUMP_GRAPHS")
    directory = Path(dump) / f"{next(_dump_counter):03d}" if dump else None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "0-input.txt").write_text(graph.dump())
    for i, module in enumerate(PASSES, start=1):
        graph = module.run(graph, ctx)
        check_well_formed(graph, after=module.NAME)
        if directory is not None:
            (directory / f"{i}-{module.NAME}.txt").write_text(graph.dump())
    return graph
