"""int8 BERT-base as users export it: sparsejit vs onnxruntime vs OpenVINO on the very same file, per form.

Forms are those of `bench.compile_time` (onnxruntime.quantization with its default options: every op type
it quantises): `dynamic`, `qdq` (static, per tensor), `qdq-pc` (static, per channel), `qop` (QOperator),
Optimum's presets, sentence-transformers' dynamic export and NNCF (`tests/int8_exporters.py`), and `fp32`
for reference. Per form and shape it prints: cold compile seconds (fresh process, empty kernel
cache; batch 1 x seq 128), the median items/s of the three engines (alternating in ~1 s blocks in one
process, each block's first run dropped), sparsejit's ratio to the faster peer, max |difference| of
sparsejit and of OpenVINO from onnxruntime (relative to max |onnxruntime output|), and the resident and
peak memory of each engine after compiling and running the file in a fresh process (sparsejit with its
kernels cached, as after any first compile).

    python -m bench.int8_forms                                 # every form, 1x128 and 16x128, 2 threads
    python -m bench.int8_forms --forms qdq,dynamic --shapes 1x128 --seconds 4 --no-memory --no-compile
    python -m bench.int8_forms --shapes "" --no-compile        # memory rows only

OpenVINO runs with PERFORMANCE_HINT=LATENCY and INFERENCE_NUM_THREADS=threads, its default precision
(bf16 on CPUs with AMX, else f32 for the non-quantised parts). Needs the bench extra:
`pip install -e ".[bench]"`. Report only: no assertions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.compare import alternate_blocks  # noqa: E402
from bench.compile_time import _compile_seconds, model_for  # noqa: E402

FORMS = ("fp32", "dynamic", "qdq", "qdq-pc", "qop", "optimum-vnni-dynamic", "optimum-vnni-static",
         "optimum-avx2-dynamic", "optimum-avx2-static", "st-dynamic", "nncf")
EXTRA_FORMS = ("sparse-int8", "sparse-qdq")  # pruned 90 % in 4x16 blocks: `--forms sparse-int8,sparse-qdq`

_MEMORY = """
import json, sys
import numpy as np
import psutil
engine, path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
feed = {k: v for k, v in np.load(sys.argv[4]).items()}
base = psutil.Process().memory_info().rss
if engine == "sparsejit":
    import sparsejit
    e = sparsejit.compile(path, batch_size=1, sequence_length=128, num_threads=threads)
    run = lambda: e.run(feed)
elif engine == "onnxruntime":
    import onnxruntime as ort
    so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    run = lambda: s.run(None, feed)
else:
    import openvino as ov
    c = ov.Core().compile_model(path, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads})
    run = lambda: c(feed)
for _ in range(20):
    run()
rss = psutil.Process().memory_info().rss
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child of a big process inherits its peak
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"rss_mb": (rss - base) / 2**20, "peak_mb": (peak - base) / 2**20}))
"""


def _feed(path: Path, batch: int, seq: int) -> dict[str, np.ndarray]:
    """Token ids and masks for the BERT-base every form was made from (half the rows padded)."""
    from tests import zoo

    del path  # every form has the inputs of the one base model
    return zoo.make_inputs(zoo.random_encoder("bert-base"), batch, seq, seed=0)


def _engines(path: Path, batch: int, seq: int, threads: int) -> dict[str, Any]:
    import sparsejit
    from bench.peers import peer_runner

    engine = sparsejit.compile(path, batch_size=batch, sequence_length=seq, num_threads=threads)
    return {"sparsejit": lambda feed: [engine.run(feed)[n] for n in engine.output_names],
            "onnxruntime": peer_runner("onnxruntime", path, threads),
            "openvino": peer_runner("openvino", path, threads)}


def _memory(path: Path, threads: int, work: Path) -> dict[str, dict[str, float]]:
    feed_file = work / "feed.npz"
    np.savez(feed_file, **_feed(path, 1, 128))
    out = {}
    for engine in ("sparsejit", "sparsejit", "onnxruntime", "openvino"):  # the first fills the kernel cache
        proc = subprocess.run([sys.executable, "-c", _MEMORY, engine, str(path), str(threads), str(feed_file)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{engine} memory run failed:\n{proc.stderr[-2000:]}")
        out[engine] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--shapes", default="1x128,16x128", help="comma-separated BATCHxSEQ")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per shape, all engines")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="cold compile time")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True, help="memory rows")
    args = parser.parse_args(argv)
    from sparsejit.kernels.target import host_target

    target = host_target()
    print(f"BERT-base (random weights), {args.threads} threads, CPU {target.cpu}, kernels: {target.kernel_family}")
    print(f"{'form':<21} {'shape':>7} {'cold s':>7} {'sj it/s':>8} {'ort it/s':>9} {'ov it/s':>8} "
          f"{'sj/best':>8} {'sj diff':>8} {'ov diff':>8}")
    for form in args.forms.split(","):
        path = model_for(form)
        cold = float("nan")
        if args.compile:
            with tempfile.TemporaryDirectory() as cache:
                cold = _compile_seconds(path, cache)
        for shape in filter(None, args.shapes.split(",")):
            batch, seq = (int(v) for v in shape.split("x"))
            feed = _feed(path, batch, seq)
            engines = _engines(path, batch, seq, args.threads)
            outputs = {name: run(feed) for name, run in engines.items()}
            ref = outputs["onnxruntime"]
            diff = {name: max(float(np.abs(np.asarray(o) - r).max()) / max(float(np.abs(r).max()), 1e-30)
                              for o, r in zip(outs, ref, strict=True)) for name, outs in outputs.items()}
            runners = {n: (lambda run=run, feed=feed: run(feed)) for n, run in engines.items()}
            times = alternate_blocks(runners, args.seconds)
            rate = {n: batch / statistics.median(t) for n, t in times.items()}
            best = max(rate["onnxruntime"], rate["openvino"])
            print(f"{form:<21} {shape:>7} {cold:>7.1f} {rate['sparsejit']:>8.1f} {rate['onnxruntime']:>9.1f} "
                  f"{rate['openvino']:>8.1f} {rate['sparsejit'] / best:>7.2f}x {diff['sparsejit']:>8.1e} "
                  f"{diff['openvino']:>8.1e}", flush=True)
            del engines
        if args.memory:
            with tempfile.TemporaryDirectory() as work:
                mem = _memory(path, args.threads, Path(work))
            print(f"{form:<8} memory after compile + 20 runs (MB above the bare interpreter), resident / peak: "
                  + ", ".join(f"{n} {m['rss_mb']:.0f} / {m['peak_mb']:.0f}" for n, m in mem.items())
                  + f"; sparsejit / onnxruntime {mem['sparsejit']['rss_mb'] / mem['onnxruntime']['rss_mb']:.2f}x"
                  f" / {mem['sparsejit']['peak_mb'] / mem['onnxruntime']['peak_mb']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
