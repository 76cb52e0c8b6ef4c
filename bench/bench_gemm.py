"""Time sparsejit's fp32 GEMM against numpy and onnxruntime on BERT-base shapes.

    python -m bench.bench_gemm [--threads 2] [--repeat 30] [--tile 8x48] [--shapes 128x768x768,...]

Prints the median effective GFLOP/s (2*M*K*N / time) of each engine and sparsejit's ratio to them.
onnxruntime runs a one-node MatMul model (weight as an initializer), ORT_ENABLE_ALL, intra-op threads
= --threads. numpy uses whatever BLAS threads it has (set OMP/OPENBLAS_NUM_THREADS to pin it).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

SHAPES = [(128, 768, 768), (128, 768, 3072), (128, 3072, 768), (2048, 768, 768), (2048, 768, 3072)]


def _median_seconds(fn: Callable[[], object], repeat: int, min_time: float = 0.05) -> float:
    fn()
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - start < min_time and len(times) < 20 * repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _ort_session(b: np.ndarray, threads: int):  # type: ignore[no-untyped-def]
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    k, n = b.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
        initializer=[numpy_helper.from_array(b, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(onnx._serialize(model) if hasattr(onnx, "_serialize")
                                else model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--tile", default=None, help="MRxNR, e.g. 8x48 (default: the library default)")
    parser.add_argument("--shapes", default=None, help="comma list of MxKxN")
    args = parser.parse_args()

    from sparsejit.kernels import gemm as G
    from sparsejit.kernels.threading import set_threads

    set_threads(args.threads)
    mr, nr = G.default_tile() if args.tile is None else (int(x) for x in args.tile.split("x"))
    shapes = SHAPES if args.shapes is None else [
        tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")
    ]
    rng = np.random.default_rng(0)
    print(f"threads={args.threads} tile={mr}x{nr}  (median effective GFLOP/s)")
    print(f"{'M x K x N':>18} {'sparsejit':>10} {'numpy':>8} {'ort':>8} {'sj/np':>6} {'sj/ort':>7}"
          f" {'compile s':>9}")
    for m, k, n in shapes:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
        out = np.empty((m, n), np.float32)
        packed = G.pack_b(b, nr=nr)
        t0 = time.perf_counter()
        G.warmup(packed, None, mr=mr)
        compile_s = time.perf_counter() - t0
        flops = 2.0 * m * k * n
        t_sj = _median_seconds(lambda: G.gemm(a, packed, out, mr=mr), args.repeat)  # noqa: B023
        ref = a @ b
        err = float(np.abs(out - ref).max() / max(1e-30, float(np.abs(ref).max())))
        t_np = _median_seconds(lambda: np.matmul(a, b, out=out), args.repeat)  # noqa: B023
        sess = _ort_session(b, args.threads)
        t_ort = float("nan")
        if sess is not None:
            t_ort = _median_seconds(lambda: sess.run(None, {"a": a}), args.repeat)  # noqa: B023
        g = [flops / t / 1e9 for t in (t_sj, t_np, t_ort)]
        print(f"{f'{m}x{k}x{n}':>18} {g[0]:10.1f} {g[1]:8.1f} {g[2]:8.1f} {g[0] / g[1]:6.2f} "
              f"{g[0] / g[2]:7.2f} {compile_s:9.2f}   (rel err {err:.1e})")


if __name__ == "__main__":
    main()
