"""Pruned BERT-base in sparsejit vs the dense model in onnxruntime (fp32), BERT-base shapes.

    python -m bench.bench_sparse [--threads 2] [--seconds 5] [--sparsity 0.9]
                                 [--structures unstructured,1x32,4x16+int8] [--configs 1x128,16x128,16x384]

The dense model is tests/zoo.py `random_encoder("bert-base")` (real BERT-base shape, random weights);
each pruned model is made from it by `sparsejit.sparsify` (magnitude, per layer, embeddings and heads
kept dense; "+int8": then int8 by onnxruntime's quantize_dynamic) and cached under
``~/.cache/sparsejit/bench-models``. Rows: onnxruntime dense fp32 (ORT_ENABLE_ALL, intra-op threads =
--threads), sparsejit dense, and sparsejit on each pruned model, for each batch x sequence config;
median latency, engines alternating in ~1 s blocks, and the speed-up over onnxruntime dense. Also
prints which kernel the load-time timing chose for the pruned weights.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.peers import ort_session  # noqa: E402


def _model_dir() -> Path:
    root = os.environ.get("SPARSEJIT_BENCH_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "sparsejit" / "bench-models"


def pruned_bert(structure: str, sparsity: float) -> Path:
    """BERT-base pruned by sparsify (built once, cached). ``"4x16+int8"``: then int8 by quantize_dynamic."""
    from sparsejit.sparsify import sparsify
    from tests import zoo

    shape, _, quant = structure.partition("+")
    out = _model_dir() / f"bert-base-{shape}-{int(round(sparsity * 100))}{'-int8' if quant else ''}" / "model.onnx"
    if not out.is_file():
        tmp = out.with_name("model.tmp.onnx")
        sparsify(zoo.random_encoder("bert-base"), tmp, sparsity=sparsity, structure=shape,
                 quantize="dynamic" if quant else False)
        os.replace(tmp, out)
    return out


def _feed(names: list[str], batch: int, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {"input_ids": rng.integers(1000, 30000, (batch, seq), dtype=np.int64),
              "attention_mask": np.ones((batch, seq), np.int64),
              "token_type_ids": np.zeros((batch, seq), np.int64)}
    return {n: arrays[n] for n in names}


def _kernel_summary(engine) -> str:  # type: ignore[no-untyped-def]
    counts: Counter[str] = Counter()
    for key, wk in engine._weight_cache.items():
        if key[0] == "weight_kernels":
            counts.update(wk._chosen)
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per row and config")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--structures", default="unstructured,1x32,4x16+int8",
                        help="sparsify structures; +int8 adds int8 (quantize_dynamic) after pruning")
    parser.add_argument("--configs", default="1x128,16x128,16x384", help="batch x sequence, comma-separated")
    parser.add_argument("--no-sparsejit-dense", action="store_true", help="skip the sparsejit dense row")
    args = parser.parse_args(argv)

    import sparsejit
    from bench.compare import alternate_blocks
    from tests import zoo

    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    dense = zoo.random_encoder("bert-base") / "model.onnx"
    models: dict[str, Path] = {}
    if not args.no_sparsejit_dense:
        models["sparsejit dense fp32"] = dense
    for s in args.structures.split(","):
        print(f"preparing BERT-base pruned {args.sparsity:.0%} {s} ...", file=sys.stderr)
        models[f"sparsejit pruned {args.sparsity:.0%} {s}"] = pruned_bert(s, args.sparsity)

    ort_sess = ort_session(dense, args.threads)
    names = [i.name for i in ort_sess.get_inputs()]
    batches = sorted({b for b, _ in configs})
    engines: dict[tuple[str, int], object] = {}
    for label, path in models.items():
        for b in batches:
            seqs = sorted({s for bb, s in configs if bb == b})
            t0 = time.perf_counter()
            engines[(label, b)] = sparsejit.compile(path, batch_size=b, sequence_length=seqs,
                                                    num_threads=args.threads)
            print(f"compiled {label} batch {b} {seqs} in {time.perf_counter() - t0:.1f}s "
                  f"[{_kernel_summary(engines[(label, b)])}]", file=sys.stderr)

    print(f"\nBERT-base, {args.threads} threads; median latency (ms) and speed-up over onnxruntime dense fp32")
    print(f"{'engine':<36}" + "".join(f"{f'b{b} s{s}':>20}" for b, s in configs))
    rows: dict[str, list[str]] = {"onnxruntime dense fp32": []}
    for label in models:
        rows[label] = []
    for b, s in configs:
        feed = _feed(names, b, s)
        runners: dict[str, Callable[[], object]] = {"onnxruntime dense fp32": lambda f=feed: ort_sess.run(None, f)}
        for label in models:
            eng = engines[(label, b)]
            runners[label] = lambda e=eng, f=feed: e.run(f)  # type: ignore[attr-defined]
        for fn in runners.values():
            fn()
        times = alternate_blocks(runners, args.seconds * len(runners), min_runs=3)
        base = statistics.median(times["onnxruntime dense fp32"])
        for k, t in times.items():
            med = statistics.median(t)
            rows[k].append(f"{med * 1e3:9.2f} ({base / med:4.2f}x)")
    for k, cells in rows.items():
        print(f"{k:<36}" + "".join(f"{c:>20}" for c in cells))


if __name__ == "__main__":
    main()
