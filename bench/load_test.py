"""Load test of ``sparsejit serve``: dynamic batching on vs off, 32 concurrent clients, loopback only.

Each run starts a real uvicorn server on a free 127.0.0.1 port (in this process), waits until it is
ready, then 32 clients send single-text requests back to back until ``--requests`` have been answered
or ``--max-seconds`` have passed. Reported: throughput (requests/s) and latency p50 / p99 per setting.

* batching on:  engine batch ``--batch-size``, requests gathered for up to ``--max-wait-ms``
* batching off: engine batch 1, every request run on its own

``--mixed``: a 50/50 mix of 8-token and 256-token texts (buckets 16 and 256), comparing count batching
(``--batch-size`` requests per batch) with token-budget batching (``--max-batch-tokens`` padded positions
per batch, by default the count setting's worst case: batch size × 256); latency reported per length too.

    python -m bench.load_test                      # default embedding model (no torch needed)
    python -m bench.load_test --mixed              # token budget vs count batching
    python -m bench.load_test --task sentiment --model-path DIR --json results.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import httpx
import numpy as np

from sparsejit.serve.app import create_app
from sparsejit.serve.config import DEFAULT_TASK, EndpointConfig, ServerConfig
from sparsejit.serve.testing import ServerThread

WORDS = ("the film was great and the acting superb but the plot dragged in the middle while the music "
         "carried every scene to a satisfying end that nobody expected").split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` different sentences of 8-24 words."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(8, 25)))) for _ in range(n)]


def make_mixed_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` texts alternating 6 and 254 words (8 and 256 tokens with [CLS] and [SEP]; each word of
    ``WORDS`` is one token in the BERT vocabularies)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=6 if i % 2 == 0 else 254)) for i in range(n)]


async def drive(url: str, body_key: str, texts: list[str], clients: int, max_requests: int,
                max_seconds: float, kinds: list[str] | None = None) -> dict[str, Any]:
    """``clients`` concurrent clients, each sending one request at a time, bounded in count and time.
    ``kinds`` labels each text (e.g. short / long): latency percentiles are reported per label too."""
    latencies: list[float] = []
    labels: list[str] = []
    errors = 0
    counter = iter(range(max_requests))
    stop_at = time.perf_counter() + max_seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in counter:
            if time.perf_counter() > stop_at:
                return
            t0 = time.perf_counter()
            r = await http.post("/predict", json={body_key: texts[i % len(texts)]})
            latencies.append(time.perf_counter() - t0)
            labels.append(kinds[i % len(texts)] if kinds else "")
            errors += r.status_code != 200

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        await http.post("/predict", json={body_key: texts[0]})  # warm the connection path
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    result = {"requests": len(latencies), "errors": errors, "seconds": round(wall, 2),
              "throughput_rps": round(len(latencies) / wall, 2),
              "p50_ms": round(float(np.percentile(ms, 50)), 1),
              "p99_ms": round(float(np.percentile(ms, 99)), 1)}
    for kind in sorted(set(kinds or ())):
        mine = ms[np.asarray(labels) == kind]
        result[f"{kind}_p50_ms"] = round(float(np.percentile(mine, 50)), 1)
        result[f"{kind}_p99_ms"] = round(float(np.percentile(mine, 99)), 1)
    return result


def run_setting(args: argparse.Namespace, batching: bool) -> dict[str, Any]:
    endpoint = EndpointConfig(name="bench", task=args.task, model=args.model_path,
                              batch_size=args.batch_size if batching else 1,
                              sequence_length=args.sequence_length)
    config = ServerConfig(endpoints=[endpoint], dynamic_batching=batching, max_wait_ms=args.max_wait_ms,
                          num_threads=args.num_threads, max_queue=max(256, 4 * args.clients))
    with ServerThread(create_app(config)) as server:
        deadline = time.monotonic() + 600
        while httpx.get(f"{server.url}/v2/health/ready").status_code != 200:
            if time.monotonic() > deadline:
                raise SystemExit("server did not become ready")
            time.sleep(0.05)
        body_key = "question" if "question" in args.task else "inputs"
        result = asyncio.run(drive(server.url, body_key, make_texts(256), args.clients, args.requests,
                                   args.max_seconds))
        metrics = httpx.get(f"{server.url}/metrics").text
    mean_batch = _mean_batch(metrics)
    return {"dynamic_batching": batching, "engine_batch_size": endpoint.batch_size,
            "mean_requests_per_batch": mean_batch, **result}


def run_mixed_setting(args: argparse.Namespace, token_budget: bool) -> dict[str, Any]:
    """One server on buckets [16, 256] batching by count or by tokens; the 50/50 mix of lengths."""
    options: dict[str, Any] = ({"max_batch_tokens": args.max_batch_tokens or args.batch_size * 256}
                               if token_budget else {"batch_size": args.batch_size})
    endpoint = EndpointConfig(name="bench", task=args.task, model=args.model_path, sequence_length=[16, 256],
                              **options)
    config = ServerConfig(endpoints=[endpoint], max_wait_ms=args.max_wait_ms, num_threads=args.num_threads,
                          max_queue=max(256, 4 * args.clients))
    texts = make_mixed_texts(256)
    with ServerThread(create_app(config)) as server:
        server.wait_ready(600)
        pipeline = server.app.state.sparsejit.endpoints["bench"].pipeline
        tokens = sorted({len(e.ids) for e in pipeline.tokenizer.encode_batch(texts)})
        if tokens != [8, 256]:
            raise SystemExit(f"the mixed texts tokenise to {tokens} tokens, not 8 and 256, with this model")
        body_key = "question" if "question" in args.task else "inputs"
        result = asyncio.run(drive(server.url, body_key, texts, args.clients, args.requests, args.max_seconds,
                                   kinds=["short" if i % 2 == 0 else "long" for i in range(len(texts))]))
        metrics = httpx.get(f"{server.url}/metrics").text
    return {"batching": f"{options['max_batch_tokens']} tokens" if token_budget else
            f"{args.batch_size} requests", "mean_requests_per_batch": _mean_batch(metrics), **result}


def _mean_batch(metrics: str) -> float | None:
    total = count = None
    for line in metrics.splitlines():
        if line.startswith("sparsejit_batch_size_sum"):
            total = float(line.split()[-1])
        elif line.startswith("sparsejit_batch_size_count"):
            count = float(line.split()[-1])
    return round(total / count, 2) if total and count else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=DEFAULT_TASK, help="task (default: embeddings)")
    parser.add_argument("--model-path", default=None, help="model directory (default: the task's default)")
    parser.add_argument("--batch-size", type=int, default=8, help="engine batch with batching on")
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=512, help="requests per setting (upper bound)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time per setting (upper bound)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--mixed", action="store_true", help="8/256-token mix: token budget vs count batching")
    parser.add_argument("--max-batch-tokens", type=int, default=None,
                        help="token budget of --mixed (default: batch size × 256)")
    args = parser.parse_args(argv)
    if args.mixed:
        return mixed_main(args)

    rows = [run_setting(args, batching=True), run_setting(args, batching=False)]
    print(f"{args.clients} concurrent clients, task {args.task}, sequence length {args.sequence_length}")
    print(f"{'dynamic batching':<18}{'engine batch':>13}{'req/batch':>11}{'requests':>10}{'req/s':>9}"
          f"{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for r in rows:
        print(f"{'on' if r['dynamic_batching'] else 'off':<18}{r['engine_batch_size']:>13}"
              f"{r['mean_requests_per_batch'] or 0:>11}{r['requests']:>10}{r['throughput_rps']:>9}"
              f"{r['p50_ms']:>9}{r['p99_ms']:>9}{r['errors']:>8}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": rows}, f, indent=2)
    return 1 if any(r["errors"] for r in rows) else 0


def mixed_main(args: argparse.Namespace) -> int:
    rows = [run_mixed_setting(args, token_budget=False), run_mixed_setting(args, token_budget=True)]
    print(f"{args.clients} concurrent clients, task {args.task}, 50/50 mix of 8 and 256 tokens, buckets [16, 256]")
    print(f"{'batching by':<16}{'req/batch':>10}{'requests':>9}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'short p50':>10}{'short p99':>10}{'long p50':>9}{'long p99':>9}{'errors':>7}")
    for r in rows:
        print(f"{r['batching']:<16}{r['mean_requests_per_batch'] or 0:>10}{r['requests']:>9}{r['throughput_rps']:>8}"
              f"{r['p50_ms']:>8}{r['p99_ms']:>8}{r['short_p50_ms']:>10}{r['short_p99_ms']:>10}"
              f"{r['long_p50_ms']:>9}{r['long_p99_ms']:>9}{r['errors']:>7}")
    print(f"token budget / count: throughput {rows[1]['throughput_rps'] / rows[0]['throughput_rps']:.2f}x, "
          f"p99 {rows[1]['p99_ms'] / rows[0]['p99_ms']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": rows}, f, indent=2)
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
