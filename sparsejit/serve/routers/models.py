"""Model listing: ``GET /v2/models`` and ``GET /v2/models/{name}``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, status

from sparsejit.serve.deps import State, require_api_key

router = APIRouter(tags=["models"], dependencies=[Depends(require_api_key)])


@router.get("/v2/models", summary="Every endpoint with its task, model, buckets and status")
def list_models(state: State) -> dict[str, Any]:
    return {"models": [e.describe() for e in state.endpoints.values()]}


@router.get("/v2/models/{name}", summary="One endpoint", responses={404: {"description": "no such endpoint"}})
def get_model(name: str, state: State) -> dict[str, Any]:
    endpoint = state.endpoints.get(name)
    if endpoint is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no endpoint named {name!r}; "
                            f"endpoints: {sorted(state.endpoints)}")
    return endpoint.describe()
