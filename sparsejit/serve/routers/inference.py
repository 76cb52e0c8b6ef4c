"""Inference routes: ``POST /v2/models/{name}/infer`` per endpoint, and ``POST /predict`` when the server
has a single endpoint. Bodies are the task pipeline's own pydantic ``input_schema`` / ``output_schema``,
so the OpenAPI document and the Python API cannot drift apart.

(No ``from __future__ import annotations`` here: handler annotations are the per-endpoint schema classes
and FastAPI must see them as objects.)
"""

import logging
import uuid
from typing import Any

from fastapi import APIRouter, Depends, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from sparsejit.errors import InvalidInputError, SequenceTooLongError, ShapeError
from sparsejit.serve.batching import ClientBatchTooLargeError, QueueFullError, RequestTimeoutError
from sparsejit.serve.deps import State, require_api_key
from sparsejit.serve.state import EndpointState, ServerState

__all__ = ["ErrorDetail", "inference_router", "infer_path"]

logger = logging.getLogger("sparsejit.serve")


class ErrorDetail(BaseModel):
    """Error body: a message, and for internal errors the id under which the server logged it."""

    detail: str
    error_id: str | None = None


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorDetail, "description": "inputs the model cannot use"},
    401: {"model": ErrorDetail, "description": "missing or invalid API key"},
    413: {"model": ErrorDetail, "description": "request body too large"},
    500: {"model": ErrorDetail, "description": "internal error (error_id is in the server log)"},
    503: {"model": ErrorDetail, "description": "model not ready yet, or queue full (see Retry-After)"},
    504: {"model": ErrorDetail, "description": "request timed out"},
}


def infer_path(name: str) -> str:
    """URL path of endpoint ``name``'s inference route."""
    return f"/v2/models/{name}/infer"


def _error(code: int, detail: str, error_id: str | None = None,
           retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    body = ErrorDetail(detail=detail, error_id=error_id).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=code, headers=headers)


async def run_inference(endpoint: EndpointState, body: BaseModel, state: ServerState) -> Any:
    """Queue ``body`` on the endpoint's batcher; map every failure to a clean HTTP answer."""
    if (why := endpoint.unavailable()) is not None:
        if endpoint.status == "failed":
            return _error(status.HTTP_503_SERVICE_UNAVAILABLE, why)
        return _error(status.HTTP_503_SERVICE_UNAVAILABLE, f"{why}; retry when /v2/health/ready is 200",
                      retry_after=2)
    assert endpoint.batcher is not None
    try:
        return await endpoint.batcher.submit(body, state.config.request_timeout_s)
    except QueueFullError as exc:
        return _error(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), retry_after=1)
    except RequestTimeoutError as exc:
        return _error(status.HTTP_504_GATEWAY_TIMEOUT, str(exc))
    except (ClientBatchTooLargeError, SequenceTooLongError) as exc:
        return _error(413, str(exc))
    except (InvalidInputError, ShapeError) as exc:
        return _error(status.HTTP_400_BAD_REQUEST, str(exc))
    except Exception:
        error_id = uuid.uuid4().hex[:12]
        logger.exception("internal error %s on endpoint %r", error_id, endpoint.name)
        return _error(status.HTTP_500_INTERNAL_SERVER_ERROR, "internal server error", error_id=error_id)


def _handler(name: str, input_schema: type[BaseModel]) -> Any:
    async def infer(body: input_schema, state: State) -> Any:  # type: ignore[valid-type]
        return await run_inference(state.endpoints[name], body, state)

    infer.__name__ = f"infer_{name.replace('-', '_').replace('.', '_')}"
    return infer


def inference_router(state: ServerState) -> APIRouter:
    """One route per endpoint (each with its task's schemas), plus ``/predict`` for a single endpoint."""
    router = APIRouter(tags=["inference"], dependencies=[Depends(require_api_key)])
    for name, endpoint in state.endpoints.items():
        klass = endpoint.pipeline_class
        doc = (klass.input_schema.__doc__ or "").strip()
        router.add_api_route(
            infer_path(name), _handler(name, klass.input_schema), methods=["POST"],
            response_model=klass.output_schema, responses=_ERRORS, summary=f"{name}: {klass.task}",
            description=doc, operation_id=f"infer_{name}")
    if len(state.endpoints) == 1:
        (name, endpoint), = state.endpoints.items()
        klass = endpoint.pipeline_class
        router.add_api_route(
            "/predict", _handler(name, klass.input_schema), methods=["POST"],
            response_model=klass.output_schema, responses=_ERRORS,
            summary=f"predict ({klass.task}, endpoint {name!r})", operation_id="predict")
    return router


