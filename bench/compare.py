"""sparsejit vs the engines users pick instead, end to end, in one process, engines alternating.

    python -m bench.compare                       # fp32: sparsejit, onnxruntime, OpenVINO default and f32
    python -m bench.compare --engines sparsejit-bf16,sparsejit-auto,onnxruntime,openvino
    python -m bench.compare --rows bert-b1 --threads 1 --seconds 10
    python -m bench.compare --compile-time        # cold and warm compile of BERT-base

Same model file and thread count for every engine (setups in `bench.peers`; OpenVINO is a bench
extra). The engines alternate in blocks of about a second (`alternate_blocks`); reported: medians, each
sparsejit engine's throughput over the fastest peer's, each engine's max |difference| from onnxruntime
relative to max |output|, and the precision each actually ran (OpenVINO's default is bf16 on CPUs with
AMX or AVX512-BF16).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


ENGINES = ("sparsejit", "sparsejit-bf16", "sparsejit-auto", "onnxruntime", "openvino", "openvino-f32")
DEFAULT_ENGINES = "sparsejit,onnxruntime,openvino,openvino-f32"


def _runner(name: str, path: Path, row: Row, threads: int, precision: str) -> tuple[Callable[[dict], list], str]:
    """(run(feed) -> outputs in graph order, what it runs) of one engine spec."""
    if name.startswith("sparsejit"):
        import sparsejit

        chosen = name.split("-", 1)[1] if "-" in name else precision
        engine = sparsejit.compile(path, batch_size=row.batch, sequence_length=row.seq, num_threads=threads,
                                   precision=chosen)
        info = engine.describe()
        return (lambda feed: [engine.run(feed)[n] for n in engine.output_names],
                f"{info['precision']} ({info['float_products']})")
    from bench.peers import openvino_model, openvino_precision, peer_runner

    label = "fp32"
    if name.startswith("openvino"):
        label = openvino_precision(openvino_model(path, threads, "f32" if name == "openvino-f32" else None))
    return peer_runner(name, path, threads), label


def measure(row: Row, threads: int, seconds: float, block_seconds: float = 1.0, precision: str = "fp32",
            engines: tuple[str, ...] = ("sparsejit", "onnxruntime")) -> dict[str, Any]:
    """Median seconds per run of each engine on the row, alternating; ratios of sparsejit's engines to
    the fastest other engine; each engine's max |difference| from onnxruntime's outputs."""
    directory = model_dir(row.model)
    path = directory / "model.onnx"
    feed = full_inputs(directory, row.batch, row.seq)
    built = {name: _runner(name, path, row, threads, precision) for name in engines}
    reference = built["onnxruntime"][0](feed) if "onnxruntime" in built else None
    result: dict[str, Any] = {"row": row.name, "threads": threads, "engines": {}}
    for name, (run, label) in built.items():
        entry: dict[str, Any] = {"runs_as": label}
        if reference is not None:
            out = run(feed)[0]
            entry["max_err_rel_to_max"] = float(np.abs(out - reference[0]).max() / np.abs(reference[0]).max())
        result["engines"][name] = entry
    for run, _ in built.values():  # warm-up
        run(feed)
        run(feed)
    times = alternate_blocks({name: functools.partial(run, feed) for name, (run, _) in built.items()},
                             seconds, block_seconds)
    for name, samples in times.items():
        med = float(np.median(samples))
        p90 = float(np.percentile(samples, 90))
        result["engines"][name].update(median_ms=round(med * 1e3, 2), p90_ms=round(p90 * 1e3, 2),
                                       items_per_s=round(row.batch / med, 1), runs=len(samples))
    peers = [n for n in engines if not n.startswith("sparsejit")]
    if peers:
        best = min(peers, key=lambda n: result["engines"][n]["median_ms"])
        result["fastest_peer"] = best
        for name in engines:
            if name.startswith("sparsejit"):
                result["engines"][name]["vs_fastest_peer"] = round(
                    result["engines"][best]["median_ms"] / result["engines"][name]["median_ms"], 3)
    return result


def format_row(res: dict[str, Any]) -> str:
    lines = [f"{res['row']}  threads={res['threads']}"]
    for name, e in res["engines"].items():
        ratio = (f"  {e['vs_fastest_peer']:.2f}x the fastest peer ({res['fastest_peer']})"
                 if "vs_fastest_peer" in e else "")
        err = f"  diff {e['max_err_rel_to_max']:.1e}" if "max_err_rel_to_max" in e else ""
        lines.append(f"  {name:<15} {e['median_ms']:9.1f} ms (p90 {e['p90_ms']:.1f})  {e['items_per_s']:8.1f} items/s"
                     f"{ratio}{err}  [{e['runs_as']}]")
    return "\n".join(lines)


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
    parser.add_argument("--seconds", type=float, default=15.0, help="time per row (all engines)")
    parser.add_argument("--engines", default=DEFAULT_ENGINES,
                        help=f"comma-separated, alternating in one process; from {', '.join(ENGINES)}")
    parser.add_argument("--compile-time", action="store_true", help="also measure cold/warm compile")
    parser.add_argument("--json", type=Path, help="write results here")
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                        help="precision of the plain `sparsejit` engine (peers run the file as they do)")
    args = parser.parse_args()
    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engines {unknown}; choose from {list(ENGINES)}")
    from sparsejit.kernels.target import host_target

    target = host_target()
    print(f"CPU {target.cpu} ({target.kernel_family}); engines alternate in ~1 s blocks; medians", flush=True)
    results: list[dict[str, Any]] = []
    for key in args.rows:
        thread_counts = args.threads or ([2, 1] if key == "bert-b1" else [2])
        for threads in thread_counts:
            res = measure(ROWS[key], threads, args.seconds, precision=args.precision, engines=engines)
            results.append(res)
            print(format_row(res), flush=True)
    if args.compile_time:
        ct = compile_times()
        results.append(ct)
        print(f"BERT-base compile: cold {ct['cold_compile_s']} s, warm {ct['warm_compile_s']} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
