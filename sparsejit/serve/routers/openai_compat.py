"""OpenAI-compatible routes: ``POST /v1/embeddings`` and ``GET /v1/models``.

Clients written for the OpenAI API (its Python client, LangChain, LlamaIndex, vector databases) point
their base URL at the server. ``model`` names an embeddings endpoint; when the server has exactly one,
any name reaches it (clients often hard-code one). Inputs longer than the endpoint's largest sequence
length are refused with their token count, as OpenAI refuses them, never cut silently. Errors use
OpenAI's body: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import base64
import time
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from sparsejit.errors import InvalidInputError, SequenceTooLongError, ShapeError
from sparsejit.serve.batching import QueueFullError, RequestTimeoutError
from sparsejit.serve.deps import State, require_api_key
from sparsejit.serve.state import EndpointState, ServerState

router = APIRouter(tags=["openai"], dependencies=[Depends(require_api_key)])

_EMBEDDINGS_TASK = "transformers_embedding_extraction"
_STARTED = int(time.time())


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="an embeddings endpoint's name (any name when there is only one)")
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="a text, a list of texts, token ids, or a list of token-id lists")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="keep the first N dimensions, then renormalise")
    user: str | None = Field(None, description="accepted and ignored")


class EmbeddingObject(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str
    index: int


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingObject]
    model: str
    usage: Usage


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sparsejit"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


def openai_error(status_code: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, retry_after: int | None = None) -> JSONResponse:
    """An error in OpenAI's body shape."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status_code, headers=headers)


def _embeddings_endpoint(state: ServerState, model: str) -> EndpointState | None:
    candidates = state.endpoints_for(_EMBEDDINGS_TASK)
    named = [e for e in candidates if e.name == model]
    return named[0] if named else candidates[0] if len(candidates) == 1 else None


def _items(value: str | list[Any]) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) for v in value):
        return [value]  # one token-id list
    return list(value)


def _encode(vector: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


@router.post("/v1/embeddings", response_model=EmbeddingsResponse, summary="OpenAI-compatible embeddings",
             responses={400: {"description": "unusable input (OpenAI error body)"},
                        404: {"description": "no embeddings endpoint of that name"},
                        429: {"description": "queue full, retry after Retry-After"},
                        503: {"description": "endpoint not ready"}})
async def create_embeddings(body: EmbeddingsRequest, state: State) -> Any:
    endpoint = _embeddings_endpoint(state, body.model)
    if endpoint is None:
        names = sorted(e.name for e in state.endpoints_for(_EMBEDDINGS_TASK))
        return openai_error(status.HTTP_404_NOT_FOUND, f"no embeddings model {body.model!r}; models: {names}",
                            param="model", code="model_not_found")
    if (why := endpoint.unavailable()) is not None:
        return openai_error(status.HTTP_503_SERVICE_UNAVAILABLE, why, kind="server_error",
                            retry_after=None if endpoint.status == "failed" else 2)
    items = _items(body.input)
    if not items or any(isinstance(i, str) and not i for i in items) or any(i == [] for i in items):
        return openai_error(status.HTTP_400_BAD_REQUEST, "input must be a non-empty string, or a non-empty list "
                            "of non-empty strings or token-id lists", param="input")
    pipeline = endpoint.pipeline
    try:
        rows = await run_in_threadpool(pipeline.token_rows, items, False)  # counted (and refused) once
        request = pipeline.input_schema(inputs=[row["input_ids"].tolist() for row in rows], truncate=False,
                                        dimensions=body.dimensions)
        vectors = await endpoint.batcher.submit(request, state.config.request_timeout_s)
    except SequenceTooLongError as exc:
        return openai_error(status.HTTP_400_BAD_REQUEST, str(exc), param="input", code="context_length_exceeded")
    except (InvalidInputError, ShapeError) as exc:
        return openai_error(status.HTTP_400_BAD_REQUEST, str(exc), param="input")
    except QueueFullError as exc:
        return openai_error(status.HTTP_429_TOO_MANY_REQUESTS, str(exc), kind="rate_limit_error", retry_after=1)
    except RequestTimeoutError as exc:
        return openai_error(status.HTTP_504_GATEWAY_TIMEOUT, str(exc), kind="server_error")
    try:
        matrix = np.asarray(vectors.root, dtype=np.float32)
    except ValueError:  # ragged: one matrix per text
        matrix = np.zeros((0,), np.float32)
    if matrix.ndim != 2 or len(matrix) != len(items):
        return openai_error(status.HTTP_400_BAD_REQUEST, f"endpoint {endpoint.name!r} returns per-token vectors; "
                            "configure it with a pooled extraction_strategy", param="model")
    tokens = sum(len(row["input_ids"]) for row in rows)
    return EmbeddingsResponse(
        data=[EmbeddingObject(embedding=_encode(v, body.encoding_format), index=i) for i, v in enumerate(matrix)],
        model=body.model, usage=Usage(prompt_tokens=tokens, total_tokens=tokens))


@router.get("/v1/models", response_model=ModelList, summary="OpenAI-compatible model list (every endpoint)")
def list_models(state: State) -> ModelList:
    return ModelList(data=[ModelObject(id=name, created=_STARTED) for name in state.endpoints])
