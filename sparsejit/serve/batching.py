"""Dynamic batching: concurrent requests to one endpoint are gathered into engine batches.

Each request is tokenised as it arrives (in a tokenizer thread, so the event loop never tokenises and
tokenising overlaps inference) and queued in the endpoint's bounded asyncio queue with its size: its
inputs, or with a token budget (``max_batch_tokens``) its rows' padded positions. One collector task
takes the first waiting request, then keeps taking requests while they fit the batch (the engine's batch
size, or the token budget) until ``max_wait`` has passed since the first one arrived; a request that
would overflow the batch starts the next one. The batch goes to the endpoint's single worker thread (the
event loop never runs inference). Requests in a batch with the same task options are merged into one
pipeline call, so their rows share engine batches; the results are split back per request.

A request whose inputs are unusable must not fail its neighbours: when a merged call raises, each of its
requests is run again alone and only the offending one gets the error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from sparsejit.errors import InvalidInputError
from sparsejit.serve.metrics import Metrics

__all__ = ["ClientBatchTooLargeError", "ConcurrencyLimit", "DynamicBatcher", "PipelineRunner", "QueueFullError",
           "RequestTimeoutError", "TooManyRequestsError"]

logger = logging.getLogger("sparsejit.serve")


class QueueFullError(Exception):
    """The endpoint's queue is full: answer 503 with Retry-After."""


class RequestTimeoutError(Exception):
    """The request did not finish within the per-request timeout: answer 504."""


class TooManyRequestsError(QueueFullError):
    """The server already holds ``max_concurrent_requests`` requests: answer 429 (or 503) with Retry-After."""


class ClientBatchTooLargeError(InvalidInputError):
    """One request carries more inputs than ``max_client_batch_size``: answer 413 (400 on OpenAI routes)."""


class ConcurrencyLimit:
    """Requests in flight across every endpoint of a server (queued or running), at most `limit`.
    Only the event loop touches it, so a plain counter is enough."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.active = 0

    def acquire(self) -> None:
        if self.limit is not None and self.active >= self.limit:
            raise TooManyRequestsError(f"the server is handling {self.active} requests (max_concurrent_requests "
                                       f"{self.limit}); retry later")
        self.active += 1

    def release(self) -> None:
        self.active -= 1


@dataclass
class Job:
    """One request waiting in the queue: parsed items, task options, and the future for its answer."""

    request: BaseModel
    items: list[Any]
    single: bool
    options: dict[str, Any]
    future: asyncio.Future
    encoded: list[Any] = field(default_factory=list)  # the pipeline's Encoded items
    tokens: int = 0  # padded positions of its rows
    key: str = ""
    enqueued: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.key = json.dumps(self.options, sort_keys=True, default=repr)


class PipelineRunner:
    """Runs groups of requests through a task pipeline's ``preprocess -> forward -> postprocess``.

    A request that does not say whether to ``truncate`` gets ``auto_truncate`` (the server's default:
    False, so a too-long input is refused with its token count, never cut silently)."""

    def __init__(self, pipeline: Any, auto_truncate: bool = False) -> None:
        self.pipeline = pipeline
        self.auto_truncate = auto_truncate

    def parse(self, request: BaseModel) -> tuple[list[Any], bool, dict[str, Any]]:
        """Split a request into (items, single, options): ``Pipeline.parse``, as ``Pipeline.__call__``."""
        items, single, options = self.pipeline.parse(request)
        schema = getattr(self.pipeline, "input_schema", None)
        if schema is not None and "truncate" in schema.model_fields and options.get("truncate") is None:
            options = {**options, "truncate": self.auto_truncate}
        return items, single, options

    def encode(self, items: list[Any], options: dict[str, Any]) -> tuple[list[Any], int]:
        """Tokenised items and their padded positions (``Pipeline.encode_items``)."""
        encoded = self.pipeline.encode_items(items, options) if items else []
        return encoded, sum(self.pipeline.padded_tokens(e) for e in encoded)

    def run_group(self, jobs: Sequence[Job]) -> list[BaseModel]:
        """Answers for ``jobs`` (all with the same options, tokenised), computed in one pipeline call."""
        from sparsejit.tasks.base import to_jsonable

        pipe = self.pipeline
        if any(not job.items for job in jobs):
            return [pipe.run(job.request) for job in jobs]
        results = pipe.run_encoded([e for job in jobs for e in job.encoded], jobs[0].options)
        answers, start = [], 0
        for job in jobs:
            mine = results[start:start + len(job.items)]
            start += len(job.items)
            answers.append(pipe.output_schema.model_validate(to_jsonable(pipe.format(mine, job.single))))
        return answers


class DynamicBatcher:
    """Queue + collector + worker thread of one endpoint."""

    def __init__(self, name: str, runner: PipelineRunner, *, batch_size: int, max_wait_s: float,
                 max_queue: int, metrics: Metrics, enabled: bool = True, max_client_batch: int | None = None,
                 limit: ConcurrencyLimit | None = None, max_batch_tokens: int | None = None) -> None:
        self.name = name
        self.max_batch_tokens = max_batch_tokens
        self.max_client_batch = max_client_batch
        self.limit = limit or ConcurrencyLimit(None)
        self.runner = runner
        self.batch_size = max(1, batch_size)
        self.max_wait_s = max_wait_s
        self.enabled = enabled
        self.metrics = metrics
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=max_queue)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sparsejit-{name}")
        self.tokenizer_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sparsejit-{name}-tok")
        self._collector: asyncio.Task | None = None
        self._carry: Job | None = None  # taken from the queue but left for the next batch
        self._busy = 0

    # ---- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._collector is None:
            loop = asyncio.get_running_loop()
            self._collector = loop.create_task(self._collect(), name=f"batcher-{self.name}")

    async def stop(self, timeout_s: float) -> None:
        """Finish what is queued and running (up to ``timeout_s``), then stop the worker."""
        deadline = time.monotonic() + timeout_s
        while (not self.queue.empty() or self._carry is not None or self._busy) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._collector is not None:
            self._collector.cancel()
            try:
                await self._collector
            except asyncio.CancelledError:
                pass
            self._collector = None
        waiting = [self._carry] if self._carry is not None else []
        self._carry = None
        while not self.queue.empty():  # past the deadline: tell the waiting requests
            waiting.append(self.queue.get_nowait())
        for job in waiting:
            if not job.future.done():
                job.future.set_exception(QueueFullError("server is shutting down"))
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.tokenizer_executor.shutdown(wait=True, cancel_futures=True)

    # ---- requests ---------------------------------------------------------------------------------
    async def submit(self, request: BaseModel, timeout_s: float) -> BaseModel:
        """Queue ``request`` and wait for its answer. Raises the pipeline's error for bad inputs,
        :class:`ClientBatchTooLargeError` past ``max_client_batch`` inputs, :class:`QueueFullError` when the
        queue is full (:class:`TooManyRequestsError` when the server is), :class:`RequestTimeoutError` past
        the deadline."""
        items, single, options = self.runner.parse(request)
        if self.max_client_batch is not None and len(items) > self.max_client_batch:
            raise ClientBatchTooLargeError(f"{len(items)} inputs in one request; at most {self.max_client_batch} "
                                           "(max_client_batch_size)")
        try:
            self.limit.acquire()
        except TooManyRequestsError:
            self.metrics.inc("rejected_total", endpoint=self.name)
            raise
        try:
            return await self._queue_and_wait(request, items, single, options, timeout_s)
        finally:
            self.limit.release()

    async def _queue_and_wait(self, request: BaseModel, items: list[Any], single: bool, options: dict[str, Any],
                              timeout_s: float) -> BaseModel:
        loop = asyncio.get_running_loop()
        encoded, tokens = await loop.run_in_executor(self.tokenizer_executor, self.runner.encode, items, options)
        job = Job(request, items, single, options, loop.create_future(), encoded, tokens)
        future = job.future
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.inc("rejected_total", endpoint=self.name)
            raise QueueFullError(f"endpoint {self.name!r} has {self.queue.maxsize} requests waiting; "
                                 "retry later") from None
        self.metrics.set("queue_depth", self.queue.qsize(), endpoint=self.name)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            future.cancel()  # the worker skips it if it has not started
            raise RequestTimeoutError(f"request did not finish within {timeout_s:g} s") from None

    # ---- collector --------------------------------------------------------------------------------
    def _size(self, job: Job) -> int:
        return job.tokens if self.max_batch_tokens is not None else len(job.items)

    async def _next_job(self) -> Job:
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        return await self.queue.get()

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        limit = self.max_batch_tokens if self.max_batch_tokens is not None else self.batch_size
        while True:
            batch = [await self._next_job()]
            size = self._size(batch[0])
            if self.enabled:
                deadline = batch[0].enqueued + self.max_wait_s
                while size < limit:
                    try:
                        job = self.queue.get_nowait()
                    except asyncio.QueueEmpty:
                        remaining = deadline - time.perf_counter()
                        if remaining <= 0:
                            break
                        try:
                            job = await asyncio.wait_for(self.queue.get(), remaining)
                        except TimeoutError:
                            break
                    if size + self._size(job) > limit:
                        self._carry = job  # it starts the next batch
                        break
                    batch.append(job)
                    size += self._size(job)
            self.metrics.set("queue_depth", self.queue.qsize(), endpoint=self.name)
            batch = [job for job in batch if not job.future.done()]  # timed out while waiting
            if not batch:
                continue
            self._busy += 1
            self.metrics.set("inflight_requests", len(batch), endpoint=self.name)
            try:
                outcomes = await loop.run_in_executor(self.executor, self._run_batch, batch)
            except Exception as exc:  # the executor itself failed (e.g. shut down)
                outcomes = [exc] * len(batch)
            finally:
                self._busy -= 1
                self.metrics.set("inflight_requests", 0, endpoint=self.name)
            for job, outcome in zip(batch, outcomes, strict=True):
                if job.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)

    # ---- worker thread ----------------------------------------------------------------------------
    def _run_batch(self, batch: list[Job]) -> list[BaseModel | Exception]:
        """Runs in the worker thread: one pipeline call per group of equal options."""
        start = time.perf_counter()
        self.metrics.observe("batch_size", len(batch), endpoint=self.name)
        self.metrics.observe("batch_items", sum(len(j.items) for j in batch), endpoint=self.name)
        self.metrics.observe("batch_tokens", sum(j.tokens for j in batch), endpoint=self.name)
        groups: dict[str, list[int]] = {}
        for i, job in enumerate(batch):
            groups.setdefault(job.key, []).append(i)
        outcomes: list[BaseModel | Exception] = [RuntimeError("not run")] * len(batch)
        for indices in groups.values():
            jobs = [batch[i] for i in indices]
            for i, outcome in zip(indices, self._run_group(jobs), strict=True):
                outcomes[i] = outcome
        self.metrics.observe("inference_seconds", time.perf_counter() - start, endpoint=self.name)
        return outcomes

    def _run_group(self, jobs: list[Job]) -> list[BaseModel | Exception]:
        try:
            return list(self.runner.run_group(jobs))
        except Exception as exc:
            if len(jobs) == 1:
                return [exc]
        return [self._run_alone(job) for job in jobs]  # isolate the request(s) that failed

    def _run_alone(self, job: Job) -> BaseModel | Exception:
        try:
            return self.runner.run_group([job])[0]
        except Exception as exc:
            return exc


