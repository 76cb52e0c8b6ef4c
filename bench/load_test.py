"""Load test of ``sparsejit serve``: dynamic batching on vs off, 32 concurrent clients, loopback only.

Each run starts a real uvicorn server on a free 127.0.0.1 port (in this process), waits until it is
ready, then 32 clients send single-text requests back to back until ``--requests`` have been answered
or ``--max-seconds`` have passed. Reported: throughput (requests/s) and latency p50 / p99 per setting.

* batching on:  engine batch ``--batch-size``, requests gathered for up to ``--max-wait-ms``
* batching off: engine batch 1, every request run on its own

    python bench/load_test.py                      # default embedding model (no torch needed)
    python bench/load_test.py --task sentiment --model-path DIR --json results.json
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


async def drive(url: str, body_key: str, texts: list[str], clients: int, max_requests: int,
                max_seconds: float) -> dict[str, Any]:
    """``clients`` concurrent clients, each sending one request at a time, bounded in count and time."""
    latencies: list[float] = []
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
            errors += r.status_code != 200

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        await http.post("/predict", json={body_key: texts[0]})  # warm the connection path
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {"requests": len(latencies), "errors": errors, "seconds": round(wall, 2),
            "throughput_rps": round(len(latencies) / wall, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1)}


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
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
