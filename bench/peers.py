"""The engines users pick instead of sparsejit, set up the same way for every benchmark.

onnxruntime: ORT_ENABLE_ALL, `threads` intra-op threads, one inter-op thread. OpenVINO: the CPU plugin
with PERFORMANCE_HINT=LATENCY and INFERENCE_NUM_THREADS=threads, at its default precision (bf16 for float
products on CPUs with AMX or AVX512-BF16) or `precision="f32"` (INFERENCE_PRECISION_HINT=f32). Both are
bench extras (`pip install -e ".[bench]"`), never sparsejit runtime dependencies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

Feed = Mapping[str, np.ndarray]


def ort_session(path: str | Path, threads: int) -> Any:
    """An onnxruntime CPU session on the file (ORT_ENABLE_ALL, `threads` intra-op threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def openvino_model(path: str | Path, threads: int, precision: str | None = None) -> Any:
    """An OpenVINO compiled model on the CPU plugin (latency hint; `precision="f32"` forces f32)."""
    try:
        import openvino as ov
    except ImportError:
        raise SystemExit("OpenVINO is not installed: pip install -e '.[bench]' (a bench extra)") from None
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    return ov.Core().compile_model(str(path), "CPU", config)


def openvino_precision(compiled: Any) -> str:
    """The precision OpenVINO chose for float products (e.g. bf16 by default on AMX / AVX512-BF16)."""
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    return hint.to_string() if hasattr(hint, "to_string") else str(hint)


def peer_runner(name: str, path: str | Path, threads: int) -> Callable[[Feed], list[np.ndarray]]:
    """`run(feed) -> outputs in graph order` for "onnxruntime", "openvino" or "openvino-f32"."""
    if name == "onnxruntime":
        session = ort_session(path, threads)
        return lambda feed: session.run(None, dict(feed))
    if name in ("openvino", "openvino-f32"):
        compiled = openvino_model(path, threads, "f32" if name == "openvino-f32" else None)
        n = len(compiled.outputs)
        return lambda feed: [compiled(dict(feed))[i] for i in range(n)]
    raise ValueError(f"unknown peer {name!r}: onnxruntime, openvino or openvino-f32")
