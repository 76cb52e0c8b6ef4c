"""``GET /metrics``: Prometheus text, or OpenMetrics when the scraper asks for it (``Accept``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from sparsejit.serve.deps import State, require_api_key

router = APIRouter(tags=["metrics"], dependencies=[Depends(require_api_key)])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
def metrics(state: State, request: Request) -> Response:
    for name, endpoint in state.endpoints.items():
        if endpoint.batcher is not None:
            state.metrics.set("queue_depth", endpoint.batcher.queue.qsize(), endpoint=name)
    openmetrics = "application/openmetrics-text" in request.headers.get("accept", "")
    body, content_type = state.metrics.render(openmetrics)
    return Response(body, media_type=content_type)
