"""``GET /metrics`` in the Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from sparsejit.serve.deps import State, require_api_key

router = APIRouter(tags=["metrics"], dependencies=[Depends(require_api_key)])


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
def metrics(state: State) -> PlainTextResponse:
    for name, endpoint in state.endpoints.items():
        if endpoint.batcher is not None:
            state.metrics.set("queue_depth", endpoint.batcher.queue.qsize(), endpoint=name)
    return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
