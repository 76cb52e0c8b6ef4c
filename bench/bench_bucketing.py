"""Throughput of a task pipeline with sequence-length buckets vs one max-length plan, on real tweets.

Texts: the WNUT-16 training sentences (../shared/data/wnut16-train.conll, tokens joined by spaces).
Compares ``sequence_length=[32, 64, 128]`` (each chunk of rows runs in the smallest bucket that fits)
against ``sequence_length=128`` (every chunk padded to 128). Also prints what ``suggest_buckets`` proposes
for these texts. Report only: no assertions on timings.

    python bench/bench_bucketing.py                      # NER (default rampart model), 600 sentences
    python bench/bench_bucketing.py --task sentiment --model-path DIR --limit 0 --batch-size 8
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np

from sparsejit import Pipeline
from sparsejit.tasks import suggest_buckets

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wnut16-train.conll"


def read_conll_sentences(path: Path) -> list[str]:
    """Sentences of a ``token<TAB>tag`` file whose sentences are separated by blank / tab-only lines."""
    sentences, tokens = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        token = line.split("\t", 1)[0].strip()
        if token:
            tokens.append(token)
        elif tokens:
            sentences.append(" ".join(tokens))
            tokens = []
    if tokens:
        sentences.append(" ".join(tokens))
    return sentences


def throughput(pipe: Pipeline, texts: list[str], repeats: int) -> float:
    """Best-of-``repeats`` texts per second of ``pipe(texts)``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        pipe(texts)
        best = min(best, time.perf_counter() - start)
    return len(texts) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="ner")
    parser.add_argument("--model-path", default=None, help="default: the task's default model")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=600, help="sentences to use (0 = all 2,394)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--buckets", default="32,64,128")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--num-threads", type=int, default=None)
    args = parser.parse_args()

    texts = read_conll_sentences(args.data)
    if args.limit:
        texts = texts[: args.limit]
    buckets = [int(b) for b in args.buckets.split(",")]
    common = {"model_path": args.model_path, "batch_size": args.batch_size, "num_threads": args.num_threads}

    t0 = time.perf_counter()
    bucketed = Pipeline.create(args.task, sequence_length=buckets, **common)
    t1 = time.perf_counter()
    single = Pipeline.create(args.task, sequence_length=max(buckets), **common)
    t2 = time.perf_counter()

    lengths = np.array([len(e.ids) for e in bucketed.encode(texts)])
    # Rows are sorted by length and chunked by batch size; each chunk runs in the bucket of its longest row.
    order = np.sort(lengths)
    chunks = [order[i:i + args.batch_size].max() for i in range(0, len(order), args.batch_size)]
    used = Counter(min(b for b in buckets if b >= n) for n in chunks)
    print(f"{len(texts)} sentences from {args.data.name}; tokens per sentence: "
          f"median {np.median(lengths):.0f}, p90 {np.percentile(lengths, 90):.0f}, max {lengths.max()}")
    print(f"suggest_buckets (quantiles 0.5/0.9/1.0): {suggest_buckets(texts, bucketed)}")
    print(f"task {bucketed.task}, batch size {args.batch_size}; compile: buckets {buckets} {t1 - t0:.1f} s, "
          f"single {max(buckets)} {t2 - t1:.1f} s")
    print(f"chunks per bucket: {dict(sorted(used.items()))}")

    warm = texts[: 2 * args.batch_size]
    bucketed(warm)
    single(warm)
    rate_b = throughput(bucketed, texts, args.repeats)
    rate_s = throughput(single, texts, args.repeats)
    print(f"buckets {buckets}: {rate_b:8.1f} sentences/s")
    print(f"single {max(buckets):<10}: {rate_s:8.1f} sentences/s")
    print(f"speed-up with buckets: {rate_b / rate_s:.2f}x")


if __name__ == "__main__":
    main()
