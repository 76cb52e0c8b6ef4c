"""An executable plan: one specialised graph, its preallocated buffers and a list of kernel calls."""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np

from sparsejit.graph.ir import Graph
from sparsejit.graph.memory import plan_memory
from sparsejit.graph.op_traits import VIEW as VIEW_OPS
from sparsejit.plan import ops_attention, ops_elementwise, ops_nn, ops_quant, ops_tensor  # noqa: F401  (register lowerings)
from sparsejit.plan.lowering import LowerContext, check_supported, lower, lowers


def _progress_wanted() -> bool:
    setting = os.environ.get("SPARSEJIT_PROGRESS", "auto").lower()
    if setting in ("0", "false", "no", "off"):
        return False
    return setting in ("1", "true", "yes", "on") or sys.stderr.isatty()


@lowers(*VIEW_OPS)
def _view(node, ctx):  # views were bound to their input's buffer by the memory plan
    return None


def _last_readers(graph: Graph) -> dict[str, int]:
    """Index of the last node reading each initializer that is not a graph output."""
    outputs = set(graph.output_names)
    last: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for name in node.inputs:
            if name in graph.initializers and name not in outputs:
                last[name] = i
    return last


def release_weight_form(weight_cache: dict, name: str) -> bool:
    """Let the kernels built from initializer `name` drop their unpacked copy of it; True when such a
    kernel form exists, so the model's own copy may go too (every bucket must have chosen its kernel)."""
    found = False
    for key, value in weight_cache.items():
        if isinstance(key, tuple) and len(key) > 1 and key[1] == name:
            if key[0] == "weight_kernels":
                value.release_weight()
                found = True
            elif key[0] == "packed_int8":  # QLinearMatMul's constant weight
                found = True
    return found


class Plan:
    """Runs one bucket shape. Not re-entrant: `lock` serialises callers sharing the buffers."""

    def __init__(self, graph: Graph, weight_cache: dict, label: str = "", precision: str = "fp32",
                 release_weights: bool = False) -> None:
        """`release_weights`: no plan is lowered after this one, so each weight kept in a kernel's own
        form (`release_weight_form`) loses its model copy as soon as its last reader is lowered."""
        check_supported(graph)
        self.graph = graph
        memory = plan_memory(graph)
        self.buffer_bytes = memory.total_bytes
        blocks = memory.allocate()
        info = graph.value_info
        arrays: dict[str, np.ndarray] = {}
        for v in graph.inputs:
            arrays[v.name] = np.zeros(v.shape, dtype=v.dtype)
        for name, block in memory.block_of.items():
            v = info[name]
            nbytes = int(np.prod(v.shape)) * v.dtype.itemsize
            arrays[name] = blocks[block][:nbytes].view(v.dtype).reshape(v.shape)
        for name, source in memory.alias_of.items():
            arrays[name] = arrays[source].reshape(info[name].shape)
        self.inputs = {v.name: arrays[v.name] for v in graph.inputs}
        ctx = LowerContext(graph, arrays, weight_cache, precision)
        lowered = []
        last_reader = _last_readers(graph) if release_weights else {}
        for i, node in enumerate(graph.nodes):
            ctx.scratch_pool.begin_step()
            lowered.append((node, lower(node, ctx)))
            for name in dict.fromkeys(node.inputs):  # a weight read twice by one node is released once
                if last_reader.get(name) == i and release_weight_form(weight_cache, name):
                    del graph.initializers[name]
        self.steps = [step for _, step in lowered if step is not None]
        self.step_nodes = [node for node, step in lowered if step is not None]
        self.outputs = {v.name: arrays[v.name] if v.name in arrays else graph.initializers[v.name]
                        for v in graph.outputs}
        self.lock = threading.Lock()
        self._warm_up(label)  # compile every kernel now: the first real call is fast and cannot fail late

    def _warm_up(self, label: str) -> None:
        """Run once, showing progress on a terminal while kernels compile (or load from cache)."""
        show = _progress_wanted()
        start = last = time.perf_counter()
        total = len(self.steps)
        for i, step in enumerate(self.steps, 1):
            step()
            now = time.perf_counter()
            if show and now - last > 0.5:
                last = now
                sys.stderr.write(f"\rsparsejit: compiling {label} {i}/{total} kernels, {now - start:.1f} s")
                sys.stderr.flush()
        elapsed = time.perf_counter() - start
        if show and elapsed > 1.0:
            sys.stderr.write(f"\rsparsejit: {label} ready: {total} kernels in {elapsed:.1f} s"
                             " (cached for next time)\n")
            sys.stderr.flush()

    def run(self) -> None:
        for step in self.steps:
            step()

    def profile(self, repeats: int = 10) -> dict[str, float]:
        """Median seconds per run spent in each op type (for finding what to optimise)."""
        samples: dict[str, list[float]] = {}
        for _ in range(repeats):
            totals: dict[str, float] = {}
            for node, step in zip(self.step_nodes, self.steps, strict=True):
                start = time.perf_counter()
                step()
                totals[node.op_type] = totals.get(node.op_type, 0.0) + time.perf_counter() - start
            for op, t in totals.items():
                samples.setdefault(op, []).append(t)
        return dict(sorted(((op, float(np.median(t))) for op, t in samples.items()), key=lambda kv: -kv[1]))
