"""DynamicBatcher on its own (a fake runner, no model): gathering, max wait, isolation of bad requests,
full queue, per-request timeout, draining on stop."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

import pytest
from pydantic import BaseModel, RootModel

from sparsejit.errors import InvalidInputError
from sparsejit.serve.batching import (
    ClientBatchTooLargeError,
    ConcurrencyLimit,
    DynamicBatcher,
    QueueFullError,
    RequestTimeoutError,
    TooManyRequestsError,
)
from sparsejit.serve.metrics import Metrics


class Request(BaseModel):
    inputs: list[int]
    scale: int = 1


class Answer(RootModel[list[int]]):
    pass


class FakeRunner:
    """Doubles each input (times ``scale``); an input < 0 is unusable; records every group it runs."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.groups: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()

    def parse(self, request: Request) -> tuple[list[Any], bool, dict[str, Any]]:
        return list(request.inputs), False, {"scale": request.scale}

    def encode(self, items: list[int], options: dict[str, Any]) -> tuple[list[int], int]:
        """Each input costs |input| tokens."""
        return items, sum(abs(x) for x in items)

    def run_group(self, jobs: list[Any]) -> list[Answer]:
        self.gate.wait(10)
        time.sleep(self.delay_s)
        items = [x for job in jobs for x in job.items]
        self.groups.append(items)
        if any(x < 0 for x in items):
            raise InvalidInputError("negative input")
        return [Answer([x * 2 * job.options["scale"] for x in job.items]) for job in jobs]


def make(runner: FakeRunner, **kwargs: Any) -> DynamicBatcher:
    options = {"batch_size": 8, "max_wait_s": 0.05, "max_queue": 64, "metrics": Metrics()} | kwargs
    return DynamicBatcher("fake", runner, **options)


def test_concurrent_requests_share_batches_and_get_their_own_answers() -> None:
    runner = FakeRunner(delay_s=0.02)

    async def main() -> list[Any]:
        batcher = make(runner)
        batcher.start()
        answers = await asyncio.gather(*(batcher.submit(Request(inputs=[i, i + 100]), 5) for i in range(16)))
        await batcher.stop(5)
        return answers

    answers = asyncio.run(main())
    assert [a.root for a in answers] == [[2 * i, 2 * (i + 100)] for i in range(16)]
    assert max(len(g) for g in runner.groups) == 8  # 4 requests of 2 items fill a batch of 8
    assert len(runner.groups) == 4


def test_a_request_that_would_overflow_the_batch_starts_the_next() -> None:
    runner = FakeRunner()

    async def main() -> list[Any]:
        batcher = make(runner)
        batcher.start()
        answers = await asyncio.gather(*(batcher.submit(Request(inputs=[n] * n), 5) for n in (3, 4, 2, 5)))
        await batcher.stop(5)
        return answers

    asyncio.run(main())
    assert [len(g) for g in runner.groups] == [7, 7]  # 3+4 (adding 2 would overflow 8), then 2+5


def test_token_budget_gathers_requests_by_their_tokens() -> None:
    """With max_batch_tokens a batch is filled by the requests' padded positions, not their count."""
    runner = FakeRunner()

    async def main() -> list[Any]:
        batcher = make(runner, max_batch_tokens=100)
        batcher.start()
        runner.gate.clear()
        plug = asyncio.ensure_future(batcher.submit(Request(inputs=[1]), 5))
        while not batcher._busy:  # the worker holds the plug
            await asyncio.sleep(0.005)
        sizes = [[60], [30], [30], [5, 5], [99], [1], [150]]
        waiting = [asyncio.ensure_future(batcher.submit(Request(inputs=s), 5)) for s in sizes]
        while batcher.queue.qsize() < len(sizes):
            await asyncio.sleep(0.005)
        runner.gate.set()
        answers = await asyncio.gather(plug, *waiting)
        await batcher.stop(5)
        return answers

    answers = asyncio.run(main())
    assert [a.root for a in answers[1:]] == [[120], [60], [60], [10, 10], [198], [2], [300]]
    # 60+30 (a further 30 would make 120); 30+5+5; 99+1; a request over the budget runs alone
    assert runner.groups == [[1], [60, 30], [30, 5, 5], [99, 1], [150]]


def test_different_options_run_as_separate_groups() -> None:
    runner = FakeRunner()

    async def main() -> list[Any]:
        batcher = make(runner)
        batcher.start()
        answers = await asyncio.gather(batcher.submit(Request(inputs=[1]), 5),
                                       batcher.submit(Request(inputs=[1], scale=10), 5))
        await batcher.stop(5)
        return answers

    assert [a.root for a in asyncio.run(main())] == [[2], [20]]
    assert sorted(runner.groups) == [[1], [1]]


def test_bad_request_fails_alone() -> None:
    runner = FakeRunner()

    async def main() -> list[Any]:
        batcher = make(runner)
        batcher.start()
        results = await asyncio.gather(batcher.submit(Request(inputs=[1]), 5),
                                       batcher.submit(Request(inputs=[-1]), 5),
                                       batcher.submit(Request(inputs=[3]), 5), return_exceptions=True)
        await batcher.stop(5)
        return results

    ok1, bad, ok3 = asyncio.run(main())
    assert ok1.root == [2] and ok3.root == [6]
    assert isinstance(bad, InvalidInputError)
    # the bad request shared one call with the good ones (which failed), then each ran alone
    assert runner.groups[0] == [1, -1, 3], runner.groups
    assert sorted(runner.groups[1:]) == [[-1], [1], [3]], runner.groups


def test_max_wait_bounds_the_wait_for_a_lonely_request() -> None:
    runner = FakeRunner()

    async def main() -> float:
        batcher = make(runner, max_wait_s=0.2)
        batcher.start()
        t0 = time.perf_counter()
        await batcher.submit(Request(inputs=[1]), 5)
        elapsed = time.perf_counter() - t0
        await batcher.stop(5)
        return elapsed

    assert 0.15 < asyncio.run(main()) < 2.0


def test_disabled_batching_runs_one_request_at_a_time() -> None:
    runner = FakeRunner(delay_s=0.01)

    async def main() -> None:
        batcher = make(runner, enabled=False)
        batcher.start()
        await asyncio.gather(*(batcher.submit(Request(inputs=[i]), 5) for i in range(6)))
        await batcher.stop(5)

    asyncio.run(main())
    assert sorted(runner.groups) == [[i] for i in range(6)]


def test_full_queue_and_timeout() -> None:
    runner = FakeRunner()
    runner.gate.clear()  # the worker blocks until released

    async def main() -> tuple[Any, ...]:
        batcher = make(runner, batch_size=1, max_queue=2, max_wait_s=0)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(Request(inputs=[1]), 5))
        await asyncio.sleep(0.05)  # the collector took it; the worker is blocked
        queued = [asyncio.ensure_future(batcher.submit(Request(inputs=[i]), 0.2)) for i in (2, 3)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError):
            await batcher.submit(Request(inputs=[4]), 5)
        timed_out = await asyncio.gather(*queued, return_exceptions=True)
        runner.gate.set()
        result = await first
        await batcher.stop(5)
        return result, timed_out, batcher.metrics

    result, timed_out, metrics = asyncio.run(main())
    assert result.root == [2]
    assert all(isinstance(t, RequestTimeoutError) for t in timed_out)
    assert metrics.counter("rejected_total", endpoint="fake") == 1
    assert [1] in runner.groups and [2] not in runner.groups  # timed-out requests were never run


def test_stop_finishes_queued_requests() -> None:
    runner = FakeRunner(delay_s=0.05)

    async def main() -> list[Any]:
        batcher = make(runner, batch_size=1)
        batcher.start()
        futures = [asyncio.ensure_future(batcher.submit(Request(inputs=[i]), 5)) for i in range(4)]
        await asyncio.sleep(0.01)
        await batcher.stop(5)
        return await asyncio.gather(*futures)

    assert [a.root for a in asyncio.run(main())] == [[0], [2], [4], [6]]


def test_concurrency_limit_is_shared_and_released() -> None:
    """`max_concurrent_requests` counts requests queued or running across every endpoint's batcher: the
    one past it is refused at once (TooManyRequestsError, a QueueFullError: 429 / 503 with Retry-After),
    and slots come back when requests finish, fail or time out."""
    runner = FakeRunner()
    runner.gate.clear()

    async def main() -> tuple[Any, ...]:
        limit = ConcurrencyLimit(2)
        a, b = make(runner, limit=limit), make(runner, limit=limit)  # two endpoints, one server
        a.start()
        b.start()
        held = [asyncio.ensure_future(a.submit(Request(inputs=[1]), 5)),
                asyncio.ensure_future(b.submit(Request(inputs=[2]), 5))]
        await asyncio.sleep(0.02)
        with pytest.raises(TooManyRequestsError, match="max_concurrent_requests 2"):
            await b.submit(Request(inputs=[3]), 5)
        runner.gate.set()
        answers = await asyncio.gather(*held)
        with pytest.raises(InvalidInputError):  # a failing request gives its slot back too
            await a.submit(Request(inputs=[-1]), 5)
        after = await a.submit(Request(inputs=[4]), 5)
        await a.stop(5)
        await b.stop(5)
        return answers, after, limit.active, b.metrics

    answers, after, active, metrics = asyncio.run(main())
    assert [x.root for x in answers] == [[2], [4]] and after.root == [8] and active == 0
    assert metrics.counter("rejected_total", endpoint="fake") == 1
    assert issubclass(TooManyRequestsError, QueueFullError)


def test_client_batch_size_limit() -> None:
    async def main() -> Any:
        batcher = make(FakeRunner(), max_client_batch=3)
        batcher.start()
        ok = await batcher.submit(Request(inputs=[1, 2, 3]), 5)
        with pytest.raises(ClientBatchTooLargeError, match="4 inputs in one request; at most 3"):
            await batcher.submit(Request(inputs=[1, 2, 3, 4]), 5)
        await batcher.stop(5)
        return ok

    assert asyncio.run(main()).root == [2, 4, 6]


def test_metrics_page_is_valid_prometheus_text() -> None:
    """`/metrics` text, read back by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    metrics = Metrics()
    metrics.record_request("emb", 200, 0.004)
    metrics.record_request("emb", 429, 0.001)
    metrics.observe("batch_items", 5, endpoint="emb")
    metrics.set("endpoint_ready", 1, endpoint="emb")
    page, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(page.decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("sparsejit_requests_total", (("code", "200"), ("endpoint", "emb")))] == 1
    assert samples[("sparsejit_errors_total", (("code", "429"), ("endpoint", "emb")))] == 1
    assert samples[("sparsejit_request_latency_seconds_count", (("endpoint", "emb"),))] == 2
    assert samples[("sparsejit_endpoint_ready", (("endpoint", "emb"),))] == 1
    assert metrics.histogram_counts("batch_items", endpoint="emb")[8] == 1
    assert "python_gc_objects_collected" in families and "python_info" in families  # standard collectors
    if sys.platform == "linux":
        assert samples[("process_resident_memory_bytes", ())] > 0


def test_metrics_page_in_openmetrics_format() -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    metrics = Metrics()
    metrics.record_request("emb", 200, 0.004)
    page, content_type = metrics.render(openmetrics=True)
    assert content_type.startswith("application/openmetrics-text") and page.endswith(b"# EOF\n")
    families = {f.name: f for f in text_string_to_metric_families(page.decode())}
    (sample,) = [s for s in families["sparsejit_requests"].samples if s.name == "sparsejit_requests_total"]
    assert sample.labels == {"endpoint": "emb", "code": "200"} and sample.value == 1
