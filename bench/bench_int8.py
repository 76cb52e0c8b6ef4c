"""Dense int8 BERT-base: sparsejit vs onnxruntime running the very same quantised file.

Forms: ``qop`` (quantize_static, QOperator: QLinearMatMul), ``qdq`` (quantize_static, QDQ) and
``dynamic`` (quantize_dynamic: DynamicQuantizeLinear + MatMulInteger), all made from the zoo's random
BERT-base (full size) with onnxruntime.quantization (static forms quantise MatMul only, calibrated on 4
random batches) and cached under the zoo cache. onnxruntime runs with ORT_ENABLE_ALL and the same
thread count; the three engines alternate in ~1 s blocks (see `bench.compare.alternate_blocks`).
Also prints onnxruntime on the fp32 file for reference. Report only: no assertions.

    python bench/bench_int8.py                         # shapes 1x128 and 16x128, 2 threads
    python bench/bench_int8.py --shapes 1x128 --forms dynamic --seconds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zoo  # noqa: E402
from test_quantized import quantized_model  # noqa: E402

import sparsejit  # noqa: E402
from bench.compare import alternate_blocks  # noqa: E402
from bench.peers import ort_session  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="1x128,16x128", help="comma-separated BATCHxSEQ")
    parser.add_argument("--forms", default="qop,qdq,dynamic")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="at least this many runs per engine")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per engine and shape")
    parser.add_argument("--arch", default="bert-base", help="zoo architecture (bert-base = full size)")
    args = parser.parse_args()

    base = zoo.random_encoder(args.arch, head="token_classification")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    forms = args.forms.split(",")
    print(f"{args.arch} token classification, {args.threads} threads, median of {args.repeats}")
    print(f"{'form':<9} {'shape':>7} {'ort fp32 ms':>12} {'ort int8 ms':>12} {'sparsejit ms':>13} "
          f"{'vs ort int8':>12} {'vs ort fp32':>12} {'max|diff|':>10}")
    fp32_sess = ort_session(base / "model.onnx", args.threads)
    for form in forms:
        path = quantized_model(base, form) / "model.onnx"
        sess = ort_session(path, args.threads)
        for batch, seq in shapes:
            feed = zoo.make_inputs(base, batch, seq, seed=0)
            engine = sparsejit.compile(str(path), batch, seq, num_threads=args.threads)
            runners = {"fp32": lambda: fp32_sess.run(None, feed), "ort": lambda: sess.run(None, feed),  # noqa: B023
                       "sj": lambda: engine.run(feed)}  # noqa: B023
            times = alternate_blocks(runners, args.seconds * len(runners), min_runs=args.repeats)
            t_fp32, t_ort, t_sj = (statistics.median(times[k]) for k in ("fp32", "ort", "sj"))
            diff = float(np.abs(engine.run(feed)["logits"] - sess.run(None, feed)[0]).max())
            print(f"{form:<9} {batch:>3}x{seq:<3} {t_fp32 * 1e3:>12.2f} {t_ort * 1e3:>12.2f} {t_sj * 1e3:>13.2f} "
                  f"{t_ort / t_sj:>11.2f}x {t_fp32 / t_sj:>11.2f}x {diff:>10.3g}")


if __name__ == "__main__":
    main()
