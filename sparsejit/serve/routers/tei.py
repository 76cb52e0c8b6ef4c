"""Hugging Face text-embeddings-inference (TEI) compatible routes: ``POST /embed``, ``POST /rerank``,
``POST /tokenize``, ``GET /info``, with TEI's request and response shapes and its error body
``{"error", "error_type"}`` (413 for inputs longer than the limit without ``truncate``, 422 for others,
429 when the queue is full, 424 when no endpoint of the needed kind is loaded).

``/embed`` and ``/tokenize`` use the server's first embeddings endpoint; ``/rerank`` its first
text-classification endpoint (a cross-encoder scoring (query, text) pairs). TEI serves one model, so
these routes take no model name; the per-endpoint routes stay available for the others.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

import sparsejit
from sparsejit.errors import InvalidInputError, SequenceTooLongError, ShapeError
from sparsejit.serve.batching import ClientBatchTooLargeError, QueueFullError, RequestTimeoutError
from sparsejit.serve.deps import State, require_api_key
from sparsejit.serve.state import EndpointState, ServerState
from sparsejit.tasks.sentence_transformers_config import read_prompts

router = APIRouter(tags=["text-embeddings-inference"], dependencies=[Depends(require_api_key)])

_EMBEDDINGS, _CLASSIFICATION = "transformers_embedding_extraction", "text_classification"
Direction = Literal["Left", "Right", "left", "right"]


class EmbedRequest(BaseModel):
    inputs: str | list[str] | list[int] | list[list[int]]
    normalize: bool = True
    prompt_name: str | None = None
    truncate: bool | None = None  # None: the server's --auto-truncate (default: refuse, 413)
    truncation_direction: Direction = "Right"
    dimensions: int | None = Field(None, ge=1)


class RerankRequest(BaseModel):
    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None  # None: the server's --auto-truncate (default: refuse, 413)
    truncation_direction: Direction = "Right"


class Rank(BaseModel):
    index: int
    score: float
    text: str | None = None


class TokenizeRequest(BaseModel):
    inputs: str | list[str]
    add_special_tokens: bool = True
    prompt_name: str | None = None


class SimpleToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None = None
    stop: int | None = None


def tei_error(status_code: int, message: str, kind: str, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": message, "error_type": kind}, status_code=status_code, headers=headers)


def _first(state: ServerState, task: str) -> EndpointState | None:
    return next(iter(state.endpoints_for(task)), None)


def _unavailable(endpoint: EndpointState | None, kind: str) -> JSONResponse | None:
    if endpoint is None:
        return tei_error(424, f"this server has no {kind} endpoint", "Backend")
    if (why := endpoint.unavailable()) is not None:
        return tei_error(status.HTTP_503_SERVICE_UNAVAILABLE, why, "Unhealthy")
    return None


def _with_prompt(endpoint: EndpointState, texts: list[Any], prompt_name: str | None) -> list[Any]:
    if prompt_name is None:
        return texts
    prompts = read_prompts(str(endpoint.pipeline.files.directory))
    if prompt_name not in prompts:
        raise InvalidInputError(f"prompt_name {prompt_name!r} is not in the model's sentence-transformers "
                                f"prompts {sorted(prompts)}")
    return [prompts[prompt_name] + t if isinstance(t, str) else t for t in texts]


async def _submit(endpoint: EndpointState, request: BaseModel, state: ServerState) -> Any:
    try:
        return await endpoint.batcher.submit(request, state.config.request_timeout_s)  # type: ignore[union-attr]
    except (SequenceTooLongError, ClientBatchTooLargeError) as exc:
        return tei_error(413, str(exc), "Validation")
    except (InvalidInputError, ShapeError) as exc:
        return tei_error(422, str(exc), "Validation")
    except QueueFullError as exc:
        return tei_error(status.HTTP_429_TOO_MANY_REQUESTS, str(exc), "Overloaded", retry_after=1)
    except RequestTimeoutError as exc:
        return tei_error(status.HTTP_504_GATEWAY_TIMEOUT, str(exc), "Backend")


@router.post("/embed", response_model=list[list[float]], summary="TEI: pooled embeddings")
async def embed(body: EmbedRequest, state: State) -> Any:
    endpoint = _first(state, _EMBEDDINGS)
    if (failure := _unavailable(endpoint, "embeddings")) is not None:
        return failure
    assert endpoint is not None
    items = body.inputs if isinstance(body.inputs, list) and body.inputs and not isinstance(body.inputs[0], int) \
        else [body.inputs]
    try:
        items = _with_prompt(endpoint, list(items), body.prompt_name)
    except InvalidInputError as exc:
        return tei_error(422, str(exc), "Validation")
    request = endpoint.pipeline.input_schema(
        inputs=items, normalize=body.normalize, truncate=body.truncate,
        truncation_direction=body.truncation_direction.lower(), dimensions=body.dimensions)
    result = await _submit(endpoint, request, state)
    if isinstance(result, JSONResponse):
        return result
    return np.asarray(result.root, dtype=np.float32).reshape(len(items), -1).tolist()


@router.post("/rerank", response_model=list[Rank], summary="TEI: rank texts against a query (cross-encoder)")
async def rerank(body: RerankRequest, state: State) -> Any:
    endpoint = _first(state, _CLASSIFICATION)
    if (failure := _unavailable(endpoint, "text-classification (reranker)")) is not None:
        return failure
    assert endpoint is not None
    if not body.texts:
        return tei_error(422, "texts must not be empty", "Validation")
    request = endpoint.pipeline.input_schema(
        inputs=[{"text": body.query, "text_pair": t} for t in body.texts], top_k=None,
        function_to_apply="none" if body.raw_scores else None, truncate=body.truncate,
        truncation_direction=body.truncation_direction.lower())
    result = await _submit(endpoint, request, state)
    if isinstance(result, JSONResponse):
        return result
    ranks = []
    for index, labels in enumerate(result.root):
        if len(labels) != 1:
            return tei_error(424, f"endpoint {endpoint.name!r} has {len(labels)} labels; a reranker has one",
                             "Backend")
        ranks.append(Rank(index=index, score=labels[0].score, text=body.texts[index] if body.return_text else None))
    return sorted(ranks, key=lambda r: r.score, reverse=True)


@router.post("/tokenize", response_model=list[list[SimpleToken]], summary="TEI: tokens of the embeddings model")
async def tokenize(body: TokenizeRequest, state: State) -> Any:
    endpoint = _first(state, _EMBEDDINGS) or _first(state, _CLASSIFICATION)
    if (failure := _unavailable(endpoint, "embeddings or text-classification")) is not None:
        return failure
    assert endpoint is not None
    texts = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
    try:
        texts = _with_prompt(endpoint, texts, body.prompt_name)
    except InvalidInputError as exc:
        return tei_error(422, str(exc), "Validation")
    tokenizer = endpoint.pipeline.tokenizer
    encodings = await run_in_threadpool(tokenizer.encode_batch, texts, add_special_tokens=body.add_special_tokens)
    answer = []
    for text, encoding in zip(texts, encodings, strict=True):
        tokens = []
        for tid, special, (start, stop) in zip(encoding.ids, encoding.special_tokens_mask, encoding.offsets,
                                               strict=True):
            tokens.append(SimpleToken(id=tid, special=bool(special),
                                      text=tokenizer.id_to_token(tid) if special else text[start:stop],
                                      start=None if special else start, stop=None if special else stop))
        answer.append(tokens)
    return answer


@router.get("/info", summary="TEI: what is served")
def info(state: State) -> dict[str, Any]:
    endpoint = _first(state, _EMBEDDINGS) or _first(state, _CLASSIFICATION) or next(iter(state.endpoints.values()))
    pipeline = endpoint.pipeline
    model_type: dict[str, Any]
    if endpoint.pipeline_class.task == _EMBEDDINGS:
        pooling = {"reduce_mean": "mean", "cls_token": "cls", "reduce_max": "max", "per_token": "none"}
        model_type = {"embedding": {"pooling": pooling.get(pipeline.default_strategy, "mean")
                                    if pipeline is not None else None}}
    else:
        labels = pipeline.id2label if pipeline is not None else {}
        kind = "reranker" if len(labels) == 1 else "classifier"
        model_type = {kind: {"id2label": {str(k): v for k, v in labels.items()},
                             "label2id": {v: k for k, v in labels.items()}}}
    max_length = pipeline.max_length if pipeline is not None else None
    return {"model_id": endpoint.config.model or endpoint.name, "model_sha": None,
            "model_dtype": pipeline.engine.precision if pipeline is not None else None, "model_type": model_type,
            "max_concurrent_requests": state.config.max_concurrent_requests, "max_input_length": max_length,
            "max_batch_tokens": _batch_tokens(endpoint, state, max_length),
            "max_client_batch_size": state.config.max_client_batch_size,
            "auto_truncate": state.config.auto_truncate,
            "tokenization_workers": 1, "version": sparsejit.__version__, "sha": None, "docker_label": None}


def _batch_tokens(endpoint: EndpointState, state: ServerState, max_length: int | None) -> int:
    """The token budget of one engine batch: the configured one, else batch size × the longest bucket."""
    budget = endpoint.config.max_batch_tokens or state.config.max_batch_tokens
    return budget if budget is not None else (max_length or 0) * endpoint.config.batch_size
