"""Prometheus metrics in the text exposition format (no client library needed).

Counters, gauges and histograms keyed by label values; all updates take one lock, so the batching
worker threads and the event loop may record concurrently.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Sequence

__all__ = ["LATENCY_BUCKETS", "Metrics"]

#: request latency buckets, seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: batch-size buckets (requests or items gathered into one engine batch).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

Labels = tuple[tuple[str, str], ...]


def _labels(**labels: str) -> Labels:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_labels(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    pairs = list(labels) + ([extra] if extra else [])
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _fmt_value(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # last: above every bound
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1


class Metrics:
    """The server's metrics. ``render()`` gives the Prometheus text page."""

    def __init__(self, prefix: str = "sparsejit") -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._gauges: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._histograms: dict[str, dict[Labels, _Histogram]] = defaultdict(dict)
        self._help: dict[str, tuple[str, str]] = {}
        self._bounds: dict[str, Sequence[float]] = {}
        self._declare("requests_total", "counter", "Inference requests answered, by endpoint and status code")
        self._declare("errors_total", "counter", "Inference requests answered with status >= 400")
        self._declare("request_latency_seconds", "histogram", "Inference request latency (arrival to "
                      "response), seconds", LATENCY_BUCKETS)
        self._declare("batch_size", "histogram", "Requests gathered into one dynamic batch", BATCH_BUCKETS)
        self._declare("batch_items", "histogram", "Inputs (texts, questions) run in one dynamic batch",
                      BATCH_BUCKETS)
        self._declare("inference_seconds", "histogram", "Pipeline time of one dynamic batch, seconds",
                      LATENCY_BUCKETS)
        self._declare("queue_depth", "gauge", "Requests waiting for a batch, by endpoint")
        self._declare("inflight_requests", "gauge", "Requests being run by the engine, by endpoint")
        self._declare("endpoint_ready", "gauge", "1 once the endpoint's model is compiled")
        self._declare("rejected_total", "counter", "Requests refused because the queue was full (503)")

    def _declare(self, name: str, kind: str, help_text: str, buckets: Sequence[float] = ()) -> None:
        self._help[name] = (kind, help_text)
        if kind == "histogram":
            self._bounds[name] = buckets

    # ---- recording ------------------------------------------------------------------------------
    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = _labels(**labels)
        with self._lock:
            self._counters[name][key] = self._counters[name].get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._gauges[name][_labels(**labels)] = value

    def add(self, name: str, amount: float, **labels: str) -> None:
        key = _labels(**labels)
        with self._lock:
            self._gauges[name][key] = self._gauges[name].get(key, 0.0) + amount

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = _labels(**labels)
        with self._lock:
            hist = self._histograms[name].get(key)
            if hist is None:
                hist = self._histograms[name][key] = _Histogram(self._bounds[name])
            hist.observe(value)

    def record_request(self, endpoint: str, status: int, seconds: float) -> None:
        """One answered inference request."""
        self.inc("requests_total", endpoint=endpoint, code=str(status))
        if status >= 400:
            self.inc("errors_total", endpoint=endpoint, code=str(status))
        self.observe("request_latency_seconds", seconds, endpoint=endpoint)

    # ---- reading --------------------------------------------------------------------------------
    def counter(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counters[name].get(_labels(**labels), 0.0)

    def histogram_counts(self, name: str, **labels: str) -> dict[float, int]:
        """Non-cumulative count per upper bound (``inf`` for the overflow bucket)."""
        with self._lock:
            hist = self._histograms[name].get(_labels(**labels))
            if hist is None:
                return {}
            return dict(zip((*hist.bounds, float("inf")), hist.counts, strict=True))

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        lines: list[str] = []
        with self._lock:
            for name, (kind, help_text) in self._help.items():
                full = f"{self.prefix}_{name}"
                lines += [f"# HELP {full} {help_text}", f"# TYPE {full} {kind}"]
                if kind == "counter":
                    for labels, value in sorted(self._counters[name].items()):
                        lines.append(f"{full}{_fmt_labels(labels)} {_fmt_value(value)}")
                elif kind == "gauge":
                    for labels, value in sorted(self._gauges[name].items()):
                        lines.append(f"{full}{_fmt_labels(labels)} {_fmt_value(value)}")
                else:
                    for labels, hist in sorted(self._histograms[name].items()):
                        cumulative = 0
                        for bound, count in zip((*hist.bounds, float("inf")), hist.counts, strict=True):
                            cumulative += count
                            le = ("le", _fmt_value(bound))
                            lines.append(f"{full}_bucket{_fmt_labels(labels, le)} {cumulative}")
                        lines.append(f"{full}_sum{_fmt_labels(labels)} {_fmt_value(hist.total)}")
                        lines.append(f"{full}_count{_fmt_labels(labels)} {hist.count}")
        return "\n".join(lines) + "\n"
