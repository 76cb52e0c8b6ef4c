"""ASGI middleware: request body size limit (413) and per-endpoint request metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from sparsejit.serve.metrics import Metrics

__all__ = ["BodySizeLimit", "InferenceMetrics"]

Scope = dict[str, Any]
ASGIApp = Callable[..., Any]


class _BodyTooLarge(Exception):
    pass


async def _send_json(send: Callable, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class BodySizeLimit:
    """Answer 413 to requests whose body exceeds ``max_bytes`` (by Content-Length, or while streaming)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _send_json(send, 400, "invalid Content-Length header")
                return
            if declared > self.max_bytes:
                await _send_json(send, 413, f"request body larger than {self.max_bytes} bytes")
                return
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(send, 413, f"request body larger than {self.max_bytes} bytes")


class InferenceMetrics:
    """Count and time every request to an inference route (``/predict``, ``/v2/models/{name}/infer``),
    whatever its outcome (422s from schema validation included)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: dict[str, str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # path -> endpoint name

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        endpoint = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def recording_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.record_request(endpoint, status, time.perf_counter() - start)
