"""The server's Prometheus metrics, kept by `prometheus_client` in a registry of the server's own.

`Metrics` names what the server records (counters, gauges, histograms by endpoint) and reads back
what tests and `/metrics` need; `prometheus_client` does the storage, the locking (worker threads and
the event loop record concurrently) and the text exposition.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CONTENT_TYPE_LATEST as TEXT_CONTENT_TYPE
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "TOKEN_BUCKETS", "Metrics"]

#: request latency buckets, seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: batch-size buckets (requests or items gathered into one engine batch).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: padded-token buckets of one dynamic batch.
TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)

_ENDPOINT = ("endpoint",)
_ENDPOINT_CODE = ("endpoint", "code")


class Metrics:
    """The server's metrics. ``render()`` gives the Prometheus text page."""

    def __init__(self, prefix: str = "sparsejit") -> None:
        self.prefix = prefix
        self.registry = CollectorRegistry(auto_describe=True)
        for standard in (PROCESS_COLLECTOR, GC_COLLECTOR, PLATFORM_COLLECTOR):  # process_*, python_gc_*, python_info
            self.registry.register(standard)
        self._metrics: dict[str, Counter | Gauge | Histogram] = {}
        self._declare(Counter, "requests_total", "Inference requests answered, by endpoint and status code",
                      _ENDPOINT_CODE)
        self._declare(Counter, "errors_total", "Inference requests answered with status >= 400", _ENDPOINT_CODE)
        self._declare(Histogram, "request_latency_seconds", "Inference request latency (arrival to response), "
                      "seconds", _ENDPOINT, LATENCY_BUCKETS)
        self._declare(Histogram, "batch_size", "Requests gathered into one dynamic batch", _ENDPOINT, BATCH_BUCKETS)
        self._declare(Histogram, "batch_items", "Inputs (texts, questions) run in one dynamic batch", _ENDPOINT,
                      BATCH_BUCKETS)
        self._declare(Histogram, "batch_tokens", "Padded positions (rows at their bucket lengths) run in one "
                      "dynamic batch", _ENDPOINT, TOKEN_BUCKETS)
        self._declare(Histogram, "inference_seconds", "Pipeline time of one dynamic batch, seconds", _ENDPOINT,
                      LATENCY_BUCKETS)
        self._declare(Gauge, "queue_depth", "Requests waiting for a batch, by endpoint", _ENDPOINT)
        self._declare(Gauge, "inflight_requests", "Requests being run by the engine, by endpoint", _ENDPOINT)
        self._declare(Gauge, "endpoint_ready", "1 once the endpoint's model is compiled", _ENDPOINT)
        self._declare(Counter, "rejected_total", "Requests refused because the endpoint's queue or the server "
                      "was full (503 / 429)", _ENDPOINT)

    def _declare(self, kind: type, name: str, help_text: str, labels: Sequence[str],
                 buckets: Sequence[float] = ()) -> None:
        extra = {"buckets": buckets} if buckets else {}
        self._metrics[name] = kind(f"{self.prefix}_{name}", help_text, labels, registry=self.registry, **extra)

    # ---- recording ------------------------------------------------------------------------------
    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self._metrics[name].labels(**labels).inc(amount)  # type: ignore[union-attr]

    def set(self, name: str, value: float, **labels: str) -> None:
        self._metrics[name].labels(**labels).set(value)  # type: ignore[union-attr]

    def observe(self, name: str, value: float, **labels: str) -> None:
        self._metrics[name].labels(**labels).observe(value)  # type: ignore[union-attr]

    def record_request(self, endpoint: str, status: int, seconds: float) -> None:
        """One answered inference request."""
        self.inc("requests_total", endpoint=endpoint, code=str(status))
        if status >= 400:
            self.inc("errors_total", endpoint=endpoint, code=str(status))
        self.observe("request_latency_seconds", seconds, endpoint=endpoint)

    # ---- reading --------------------------------------------------------------------------------
    def counter(self, name: str, **labels: str) -> float:
        """Current value of counter `name` (0 when never incremented)."""
        return self.registry.get_sample_value(f"{self.prefix}_{name}", labels) or 0.0

    def histogram_counts(self, name: str, **labels: str) -> dict[float, int]:
        """Non-cumulative count per upper bound (``inf`` for the overflow bucket)."""
        full = f"{self.prefix}_{name}_bucket"
        cumulative = []
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == full and {k: v for k, v in sample.labels.items() if k != "le"} == labels:
                    cumulative.append((float(sample.labels["le"]), int(sample.value)))
        cumulative.sort()
        counts, previous = {}, 0
        for bound, total in cumulative:
            counts[bound], previous = total - previous, total
        return counts

    def render(self, openmetrics: bool = False) -> tuple[bytes, str]:
        """The exposition and its content type: the Prometheus text format, or OpenMetrics."""
        if openmetrics:
            return generate_openmetrics(self.registry), OPENMETRICS_CONTENT_TYPE
        return generate_latest(self.registry), TEXT_CONTENT_TYPE
