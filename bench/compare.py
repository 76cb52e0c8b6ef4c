"""sparsejit vs onnxruntime, end to end, in one process, engines alternating run by run.

    python -m bench.compare                       # the issue-3 rows, 2 threads (+ batch 1 on 1 thread)
    python -m bench.compare --rows bert-b1 --threads 1 --seconds 10
    python -m bench.compare --compile-time        # cold and warm compile of BERT-base
    python -m bench.compare --precision bf16      # bf16 weights (reported apart from the fp32 ratios)

onnxruntime runs with ORT_ENABLE_ALL and the same intra_op_num_threads. The engines alternate in
blocks of about a second (see `measure`). Reports medians (noisy, shared machines) and the throughput
ratio sparsejit / onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Row:
    name: str
    model: str  # "bert-base" (random init) or "minilm" (real all-MiniLM-L6-v2)
    batch: int
    seq: int


ROWS = {
    "bert-b1": Row("BERT-base b1 s128", "bert-base", 1, 128),
    "bert-b16": Row("BERT-base b16 s128", "bert-base", 16, 128),
    "minilm-b32": Row("MiniLM-L6 b32 s128", "minilm", 32, 128),
}


def model_dir(kind: str) -> Path:
    from tests import zoo

    return zoo.random_encoder("bert-base") if kind == "bert-base" else zoo.minilm_sentence_transformer()


def full_inputs(directory: Path, batch: int, seq: int) -> dict[str, np.ndarray]:
    from tests import zoo

    feed = zoo.make_inputs(directory, batch, seq, padded=False)
    return feed


def alternate_blocks(runners: dict[str, Callable[[], object]], seconds: float, block_seconds: float = 1.0,
                     min_runs: int = 5) -> dict[str, list[float]]:
    """Seconds per run of each runner, the runners alternating in blocks of about `block_seconds`.

    The first run of each block is discarded: back-to-back single runs would let one engine's spinning
    worker threads (onnxruntime spins after a run by default; TBB briefly too) steal the cores from the
    other's next run.
    """
    times: dict[str, list[float]] = {k: [] for k in runners}
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or min(len(v) for v in times.values()) < min_runs:
        for name, fn in runners.items():
            fn()
            block_end = time.perf_counter() + block_seconds
            while True:
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
                if start > block_end:
                    break
    return times


def measure(row: Row, threads: int, seconds: float, block_seconds: float = 1.0,
            precision: str = "fp32") -> dict[str, float | str | int]:
    import onnxruntime as ort

    import sparsejit

    directory = model_dir(row.model)
    feed = full_inputs(directory, row.batch, row.seq)
    engine = sparsejit.compile(directory / "model.onnx", batch_size=row.batch, sequence_length=row.seq,
                               num_threads=threads, precision=precision)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(directory / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    runners = {"sparsejit": lambda: engine.run(feed), "onnxruntime": lambda: session.run(None, feed)}
    ours, ref = engine.run(feed)[engine.output_names[0]], session.run(None, feed)[0]
    max_err = float(np.abs(ours - ref).max())
    rel_err = max_err / float(np.abs(ref).max())
    for fn in runners.values():  # warm-up
        fn()
        fn()
    times = alternate_blocks(runners, seconds, block_seconds)
    result: dict[str, float | str | int] = {"row": row.name, "threads": threads, "precision": precision,
                                            "max_abs_err": max_err, "max_err_rel_to_max": rel_err}
    for name, samples in times.items():
        med = float(np.median(samples))
        result[f"{name}_median_ms"] = round(med * 1e3, 2)
        result[f"{name}_p90_ms"] = round(float(np.percentile(samples, 90)) * 1e3, 2)
        result[f"{name}_items_per_s"] = round(row.batch / med, 1)
        result[f"{name}_runs"] = len(samples)
    result["ratio"] = round(result["onnxruntime_median_ms"] / result["sparsejit_median_ms"], 3)
    return result


_COMPILE_SCRIPT = """
import sys, time
t = time.perf_counter()
import sparsejit
sparsejit.compile(sys.argv[1], batch_size=1, sequence_length=128)
print(time.perf_counter() - t)
"""


def compile_times() -> dict[str, float]:
    """Cold (empty kernel cache) and warm (cached) compile of BERT-base, each in a fresh process."""
    model = model_dir("bert-base") / "model.onnx"
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, SPARSEJIT_CACHE_DIR=cache)
        runs = []
        for _ in range(2):
            out = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT, str(model)], env=env,
                                 capture_output=True, text=True, check=True)
            runs.append(float(out.stdout.strip().splitlines()[-1]))
    return {"cold_compile_s": round(runs[0], 1), "warm_compile_s": round(runs[1], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--threads", type=int, nargs="*", default=None,
                        help="thread counts (default: 2 for every row, plus 1 for bert-b1)")
    parser.add_argument("--seconds", type=float, default=15.0, help="time per row (both engines)")
    parser.add_argument("--compile-time", action="store_true", help="also measure cold/warm compile")
    parser.add_argument("--json", type=Path, help="write results here")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="sparsejit weight precision (onnxruntime always runs the fp32 model)")
    args = parser.parse_args()
    results = []
    for key in args.rows:
        thread_counts = args.threads or ([2, 1] if key == "bert-b1" else [2])
        for threads in thread_counts:
            res = measure(ROWS[key], threads, args.seconds, precision=args.precision)
            results.append(res)
            print(f"{res['row']:<22} threads={threads}  sparsejit {res['sparsejit_median_ms']:8.1f} ms "
                  f"(p90 {res['sparsejit_p90_ms']:.1f}, {res['sparsejit_items_per_s']} items/s)  "
                  f"onnxruntime {res['onnxruntime_median_ms']:8.1f} ms (p90 {res['onnxruntime_p90_ms']:.1f}, "
                  f"{res['onnxruntime_items_per_s']} items/s)  ratio {res['ratio']:.2f}x  [{args.precision}: max |err| "
                  f"{res['max_abs_err']:.2e} = {res['max_err_rel_to_max']:.1e} of max |output|]", flush=True)
    if args.compile_time:
        ct = compile_times()
        results.append(ct)
        print(f"BERT-base compile: cold {ct['cold_compile_s']} s, warm {ct['warm_compile_s']} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
