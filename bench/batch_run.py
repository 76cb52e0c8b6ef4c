"""`sparsejit run` throughput against plain loops over the same pipeline, on real text.

    python -m bench.batch_run                 # 20,000 texts (embeddings, default model; 1 and 2 worker
                                              # processes) + 2,394 WNUT-16 (NER)
    python -m bench.batch_run --rows 2000
    python -m bench.batch_run --ray           # also Ray Data, 1 vs 2 actors on a local 2-CPU cluster
    python -m bench.batch_run --dask          # also Dask, 1 vs 2 local worker processes

Texts: the tweets of ../shared/data/sentiment-train.csv, the WNUT-16 sentences and the SQuAD contexts'
sentences, cycled to --rows. Engines run one after another here (not alternating: each is minutes of
steady work); figures include model load and compile, as a user's wall clock does. fastembed (the usual
peer; `pip install fastembed`) runs the same ONNX file with the same tokenizer files, loaded from a local
directory (`specific_model_path`; it would otherwise download from the Hugging Face hub), with its
defaults and with ``parallel=2`` worker processes; its vectors are checked against sparsejit's.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def wnut_sentences() -> list[str]:
    sentences, words = [], []
    for line in (SHARED / "wnut16-train.conll").read_text().splitlines():
        if line.strip():
            words.append(line.split("\t")[0])
        elif words:
            sentences.append(" ".join(words))
            words = []
    return sentences


def corpus(rows: int) -> list[str]:
    with open(SHARED / "sentiment-train.csv", newline="") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    texts += wnut_sentences()
    squad = json.loads((SHARED / "squad-v2-dev-subset.json").read_text())
    for article in squad["data"]:
        for paragraph in article["paragraphs"]:
            texts += [s for s in re.split(r"(?<=[.!?])\s+", paragraph["context"]) if s.strip()]
    return [texts[i % len(texts)] for i in range(rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--loop-rows", type=int, default=2_000, help="rows for the one-text-at-a-time loop")
    parser.add_argument("--ray", action="store_true", help="also Ray Data with 1 and 2 actors (local cluster)")
    parser.add_argument("--dask", action="store_true", help="also Dask with 1 and 2 local worker processes")
    args = parser.parse_args()

    import numpy as np
    import pyarrow.parquet as pq

    import sparsejit
    from sparsejit.batch import run
    from sparsejit.kernels.target import host_target

    print(f"CPU {host_target().cpu} ({host_target().kernel_family})", flush=True)
    texts = corpus(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "texts.jsonl"
        source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
        t0 = time.perf_counter()
        summary = run("embeddings", source, Path(tmp) / "out.parquet", batch_size=32, progress=False)
        wall = time.perf_counter() - t0
        print(f"sparsejit run, embeddings, {summary.written} rows: {wall:.1f} s, {summary.written / wall:.1f} rows/s "
              f"(buckets {summary.sequence_lengths}, batch 32)", flush=True)
        t0 = time.perf_counter()
        summary = run("embeddings", source, Path(tmp) / "out2.parquet", batch_size=32, progress=False, workers=2)
        wall = time.perf_counter() - t0
        print(f"sparsejit run --workers 2 (1 kernel thread each): {wall:.1f} s, {summary.written / wall:.1f} rows/s",
              flush=True)

        t0 = time.perf_counter()
        pipe = sparsejit.Pipeline.create("embeddings", batch_size=32, sequence_length=summary.sequence_lengths)
        vectors = np.asarray(pipe(texts))
        wall = time.perf_counter() - t0
        print(f"pipeline called on the whole list (same buckets, batch 32): {wall:.1f} s, {len(texts) / wall:.1f} "
              "rows/s", flush=True)
        for name in ("out.parquet", "out2.parquet"):  # row for row against the pipeline
            rows = pq.read_table(Path(tmp) / name).to_pylist()
            ids_in_order = [r["id"] for r in rows] == list(range(len(texts)))
            diff = float(np.abs(np.array([r["embedding"] for r in rows]) - vectors).max())
            print(f"  {name}: {len(rows)} rows, ids in input order {ids_in_order}, max |difference| from the "
                  f"pipeline {diff:.1e}", flush=True)

        _fastembed_rows(texts, Path(tmp))
        loop = texts[:args.loop_rows]
        t0 = time.perf_counter()
        single = sparsejit.Pipeline.create("embeddings", batch_size=1, sequence_length=[128])
        for text in loop:
            single(text)
        wall = time.perf_counter() - t0
        print(f"plain loop, one text per call (batch 1, seq 128), {len(loop)} rows: {wall:.1f} s, "
              f"{len(loop) / wall:.1f} rows/s", flush=True)

        if args.ray:
            _ray_rows(texts, Path(tmp))
        if args.dask:
            _dask_rows(texts, Path(tmp))
        sentences = wnut_sentences()
        ner_source = Path(tmp) / "wnut.jsonl"
        ner_source.write_text("".join(json.dumps({"text": s}) + "\n" for s in sentences))
        t0 = time.perf_counter()
        summary = run("ner", ner_source, Path(tmp) / "entities.parquet", batch_size=16, progress=False)
        wall = time.perf_counter() - t0
        print(f"sparsejit run, NER (default model), {summary.written} WNUT-16 sentences: {wall:.1f} s, "
              f"{summary.written / wall:.1f} rows/s (buckets {summary.sequence_lengths})", flush=True)


def _ray_rows(texts: list[str], tmp: Path) -> None:
    """Ray Data on a local 2-CPU cluster: 1 actor with 2 kernel threads vs 2 actors with 1 thread each."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from sparsejit.integrations.ray import run_on_ray

    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), tmp / "texts.parquet")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for actors, threads in ((1, 2), (2, 1)):
            t0 = time.perf_counter()
            rows = run_on_ray("embeddings", tmp / "texts.parquet", tmp / f"ray{actors}", concurrency=actors,
                              actor_cpus=0.5, batch_size=512,
                              predictor_kwargs={"num_threads": threads, "batch_size": 32,
                                                "sequence_length": [48, 80, 128]})
            wall = time.perf_counter() - t0
            print(f"Ray Data, {actors} actor(s) x {threads} thread(s), {rows} rows: {wall:.1f} s, "
                  f"{rows / wall:.1f} rows/s", flush=True)
    finally:
        ray.shutdown()


def _fastembed_rows(texts: list[str], tmp: Path) -> None:
    """fastembed on the default model's ONNX file and tokenizer (symlinked into the layout it reads)."""
    try:
        from fastembed import TextEmbedding
    except ImportError:
        print("fastembed not installed (pip install fastembed): skipped", flush=True)
        return
    import numpy as np

    import sparsejit
    from sparsejit.tasks.registry import get_pipeline_class

    files = get_pipeline_class("embeddings").default_model()
    local = tmp / "fastembed_model"
    local.mkdir()
    (local / "model.onnx").symlink_to(files.model)
    for name in ("tokenizer.json", "config.json", "special_tokens_map.json", "tokenizer_config.json"):
        (local / name).symlink_to(files.directory / name)
    reference = np.array(sparsejit.Pipeline.create("embeddings", sequence_length=[128])(texts[:64]))
    for parallel in (None, 2):
        t0 = time.perf_counter()
        model = TextEmbedding("sentence-transformers/all-MiniLM-L6-v2", specific_model_path=str(local),
                              local_files_only=True)
        vectors = np.array(list(model.embed(texts, parallel=parallel)))
        wall = time.perf_counter() - t0
        cosine = float(np.min(np.sum(vectors[:64] * reference, axis=1)))
        print(f"fastembed (same ONNX file, batch 256, parallel={parallel}): {wall:.1f} s, {len(texts) / wall:.1f} "
              f"rows/s (min cosine to sparsejit over 64 texts {cosine:.6f})", flush=True)


def _dask_rows(texts: list[str], tmp: Path) -> None:
    """Dask with local worker processes: 1 worker with 2 kernel threads vs 2 workers with 1 thread each."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sparsejit.integrations.dask import run_on_dask

    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), tmp / "texts.parquet")
    for workers, threads in ((1, 2), (2, 1)):
        t0 = time.perf_counter()
        rows = run_on_dask("embeddings", tmp / "texts.parquet", tmp / f"dask{workers}", num_workers=workers,
                           partitions=16, predictor_kwargs={"num_threads": threads, "batch_size": 32,
                                                            "sequence_length": [48, 80, 128]})
        wall = time.perf_counter() - t0
        print(f"Dask (processes), {workers} worker(s) x {threads} thread(s), {rows} rows: {wall:.1f} s, "
              f"{rows / wall:.1f} rows/s", flush=True)


if __name__ == "__main__":
    main()
