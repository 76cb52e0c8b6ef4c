"""Server state: the endpoints (pipeline, batcher, readiness) and the metrics, owned by the app.

Nothing here is module-global: :func:`sparsejit.serve.app.create_app` builds one :class:`ServerState` and
stores it on ``app.state``; routes reach it through the dependencies in :mod:`sparsejit.serve.deps`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from sparsejit.errors import SparsejitError
from sparsejit.serve.batching import ConcurrencyLimit, DynamicBatcher, PipelineRunner
from sparsejit.serve.config import EndpointConfig, ServerConfig
from sparsejit.serve.metrics import Metrics

__all__ = ["EndpointState", "PipelineFactory", "ServerState", "build_pipeline"]

logger = logging.getLogger("sparsejit.serve")

#: builds (compiles) the pipeline of an endpoint; runs in a worker thread.
PipelineFactory = Callable[[EndpointConfig, ServerConfig], Any]


def build_pipeline(endpoint: EndpointConfig, server: ServerConfig) -> Any:
    """``Pipeline.create`` with the endpoint's options (the default :data:`PipelineFactory`)."""
    from sparsejit.tasks.base import Pipeline

    return Pipeline.create(endpoint.task, endpoint.model, batch_size=endpoint.batch_size,
                           sequence_length=endpoint.sequence_length,
                           num_threads=endpoint.num_threads or server.num_threads,
                           precision=endpoint.precision,
                           max_batch_tokens=endpoint.max_batch_tokens or server.max_batch_tokens, **endpoint.kwargs)


@dataclass
class EndpointState:
    """One endpoint: its config, pipeline class (known before compiling), and once ready its batcher."""

    config: EndpointConfig
    pipeline_class: type
    status: Literal["pending", "compiling", "ready", "failed"] = "pending"
    error: str | None = None
    pipeline: Any = None
    batcher: DynamicBatcher | None = None
    compile_seconds: float | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def unavailable(self) -> str | None:
        """Why this endpoint cannot take requests now (failed to load, still compiling), or None."""
        if self.ready and self.batcher is not None and self.pipeline is not None:
            return None
        if self.status == "failed":
            return f"endpoint {self.name!r} failed to load: {self.error}"
        return f"endpoint {self.name!r} is {self.status}"

    def describe(self) -> dict[str, Any]:
        """JSON description for ``/v2/models``."""
        info: dict[str, Any] = {
            "name": self.name, "task": self.pipeline_class.task, "model": self.config.model,
            "batch_size": self.config.batch_size, "sequence_length": self.config.sequence_length,
            "status": self.status, "ready": self.ready,
        }
        if self.pipeline is not None:
            engine = self.pipeline.engine
            compiled = engine.describe()
            model = self.pipeline.files.model
            info.update(model=str(getattr(model, "directory", model)), inputs=list(engine.input_names),
                        outputs=list(engine.output_names), buckets=[list(b) for b in engine.buckets],
                        compile_seconds=self.compile_seconds,
                        **{k: compiled[k] for k in ("precision", "precision_requested", "float_products", "cpu",
                                                    "kernels", "amx")})
        if self.error:
            info["error"] = self.error
        return info


@dataclass
class ServerState:
    """Everything the routes share. ``start()`` compiles the endpoints in the background."""

    config: ServerConfig
    pipeline_factory: PipelineFactory = build_pipeline
    metrics: Metrics = field(default_factory=Metrics)
    endpoints: dict[str, EndpointState] = field(default_factory=dict)
    on_fatal: Callable[[str], None] | None = None  # called (once) when loading failed beyond what is allowed
    fatal: str | None = None  # why the server must stop: one line naming the endpoint(s) and the reason
    _startup: asyncio.Task | None = None

    def __post_init__(self) -> None:
        from sparsejit.tasks.registry import get_pipeline_class

        self.concurrency = ConcurrencyLimit(self.config.max_concurrent_requests)
        for endpoint in self.config.endpoints:
            klass = get_pipeline_class(endpoint.task)  # unknown tasks fail now, not after startup
            self.endpoints[endpoint.name] = EndpointState(endpoint, klass)
            self.metrics.set("endpoint_ready", 0, endpoint=endpoint.name)

    @property
    def ready(self) -> bool:
        """True once every endpoint is compiled (with allow_partial: once each is compiled or failed and
        at least one is ready)."""
        endpoints = self.endpoints.values()
        if self.config.allow_partial:
            return any(e.ready for e in endpoints) and all(e.status in ("ready", "failed") for e in endpoints)
        return bool(self.endpoints) and all(e.ready for e in endpoints)

    def endpoints_for(self, task: str) -> list[EndpointState]:
        """The endpoints running the pipeline task `task` (e.g. "text_classification"), in config order."""
        return [e for e in self.endpoints.values() if e.pipeline_class.task == task]

    def start(self) -> None:
        """Compile every endpoint in a worker thread (one after the other), without blocking startup."""
        self._startup = asyncio.get_running_loop().create_task(self._compile_all(), name="sparsejit-compile")

    async def _compile_all(self) -> None:
        for endpoint in self.endpoints.values():
            endpoint.status = "compiling"
            logger.info("compiling endpoint %r (%s, model %s)", endpoint.name, endpoint.pipeline_class.task,
                        endpoint.config.model or "default")
            start = time.perf_counter()
            try:
                pipeline = await asyncio.to_thread(self.pipeline_factory, endpoint.config, self.config)
            except SparsejitError as exc:  # a typed, explained failure: its message is the whole story
                endpoint.status, endpoint.error = "failed", f"{type(exc).__name__}: {exc}"
                logger.error("endpoint %r failed to load: %s", endpoint.name, endpoint.error)
                continue
            except Exception as exc:
                endpoint.status, endpoint.error = "failed", f"{type(exc).__name__}: {exc}"
                logger.exception("endpoint %r failed to load", endpoint.name)
                continue
            endpoint.compile_seconds = round(time.perf_counter() - start, 3)
            endpoint.pipeline = pipeline
            max_wait = endpoint.config.max_wait_ms
            max_wait = self.config.max_wait_ms if max_wait is None else max_wait
            endpoint.batcher = DynamicBatcher(
                endpoint.name, PipelineRunner(pipeline, self.config.auto_truncate), batch_size=pipeline.batch_size,
                max_wait_s=max_wait / 1000.0, max_queue=self.config.max_queue, metrics=self.metrics,
                enabled=self.config.dynamic_batching, max_client_batch=self.config.max_client_batch_size,
                limit=self.concurrency, max_batch_tokens=getattr(pipeline, "max_batch_tokens", None))
            endpoint.batcher.start()
            endpoint.status = "ready"
            self.metrics.set("endpoint_ready", 1, endpoint=endpoint.name)
            logger.info("endpoint %r ready in %.1f s: %r", endpoint.name, endpoint.compile_seconds, pipeline)
        failed = [e for e in self.endpoints.values() if e.status == "failed"]
        if failed and (not self.config.allow_partial or len(failed) == len(self.endpoints)):
            self.fatal = "; ".join(f"endpoint {e.name!r} failed to load: {e.error}" for e in failed)
            if len(failed) < len(self.endpoints):
                self.fatal += " (--allow-partial serves the others)"
            logger.error("sparsejit: %s", self.fatal)
            if self.on_fatal is not None:
                self.on_fatal(self.fatal)

    async def stop(self) -> None:
        """Graceful shutdown: stop compiling, let queued and running requests finish, stop workers."""
        if self._startup is not None and not self._startup.done():
            self._startup.cancel()
            try:
                await self._startup
            except (asyncio.CancelledError, Exception):
                pass
        for endpoint in self.endpoints.values():
            if endpoint.batcher is not None:
                await endpoint.batcher.stop(self.config.graceful_timeout_s)
