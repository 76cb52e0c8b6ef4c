"""Health routes (always open, no API key): liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from pydantic import BaseModel

from sparsejit.serve.deps import State
from sparsejit.serve.state import ServerState

router = APIRouter(tags=["health"])


class Health(BaseModel):
    """Liveness / readiness answer; ``endpoints`` maps each endpoint to its status."""

    status: str
    ready: bool
    endpoints: dict[str, str]


def _health(state: ServerState, live: bool) -> Health:
    ready = state.ready
    label = "ok" if (live or ready) else "not ready"
    return Health(status=label, ready=ready, endpoints={n: e.status for n, e in state.endpoints.items()})


@router.get("/health", response_model=Health, summary="Liveness (the process answers)")
def health(state: State) -> Health:
    return _health(state, live=True)


@router.get("/v2/health/live", response_model=Health, summary="Liveness (KServe v2)")
def live(state: State) -> Health:
    return _health(state, live=True)


@router.get("/v2/health/ready", response_model=Health, summary="Readiness: 200 once every model is compiled",
            responses={503: {"model": Health, "description": "still compiling (or a model failed)"}})
def ready(response: Response, state: State) -> Health:
    if not state.ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        response.headers["Retry-After"] = "1"
    return _health(state, live=False)
