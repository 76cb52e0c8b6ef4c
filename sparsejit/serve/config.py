"""Server configuration: one or more endpoints (task + model + compile options) and server limits.

A YAML config file looks like::

    host: 127.0.0.1          # optional server options, see ServerConfig
    port: 5543
    max_wait_ms: 5
    endpoints:
      - name: sentiment
        task: text-classification
        model: ./minilm-sentiment        # directory with model.onnx + tokenizer.json + config.json
        batch_size: 8
        sequence_length: [64, 128]
        kwargs: {top_k: 2}               # task options given to the pipeline
      - name: qa
        task: question-answering
        model: ./minilm-squad

Every endpoint is served at ``/v2/models/{name}/infer``; a server with a single endpoint also answers
``/predict``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sparsejit.errors import InvalidInputError

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_TASK", "EndpointConfig", "ServerConfig", "load_config"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5543
#: task served when no model and no task are given: a fresh install has something real to call.
DEFAULT_TASK = "transformers_embedding_extraction"


class EndpointConfig(BaseModel):
    """One served model: ``/v2/models/{name}/infer`` runs ``Pipeline.create(task, model, ...)``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64,
                      description="URL-safe endpoint name")
    task: str = Field(description="task name or alias, e.g. text-classification, qa, ner, embeddings")
    model: str | None = Field(None, alias="model_path",
                              description="model directory or .onnx file; None uses the task's default")
    batch_size: int = Field(1, ge=1, le=1024, description="engine batch: the most rows run at once")
    sequence_length: int | list[int] = Field(128, description="sequence bucket(s) to compile")
    num_threads: int | None = Field(None, ge=1, description="kernel threads (default: the server's)")
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32", description="precision of the float matrix products (auto: bf16 where this CPU runs it clearly faster)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="task options for the pipeline")
    max_wait_ms: float | None = Field(None, ge=0, description="override of the server's max_wait_ms")
    max_batch_tokens: int | None = Field(None, ge=2, description="override of the server's max_batch_tokens")

    @field_validator("sequence_length")
    @classmethod
    def _lengths(cls, value: int | list[int]) -> int | list[int]:
        lengths = [value] if isinstance(value, int) else value
        if not lengths or any(s < 2 for s in lengths):
            raise ValueError("sequence_length must be an int >= 2 or a non-empty list of them")
        return value


class ServerConfig(BaseModel):
    """Server options and endpoints. Every field can be given in the YAML file or on the command line."""

    model_config = ConfigDict(extra="forbid")

    host: str = DEFAULT_HOST
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    api_key: str | None = Field(None, description="require this key (X-API-Key or Bearer); None: open")
    num_threads: int | None = Field(None, ge=1, description="default kernel threads of every endpoint")
    dynamic_batching: bool = Field(True, description="gather concurrent requests into engine batches")
    max_wait_ms: float = Field(5.0, ge=0, le=10_000, description="longest wait for a batch to fill")
    max_batch_tokens: int | None = Field(
        None, ge=2, description="batch by a token budget instead of batch_size: an engine batch holds as many "
                                "rows as fit this many padded positions (many short texts or few long ones)")
    max_queue: int = Field(256, ge=1, description="queued requests per endpoint before 503")
    max_concurrent_requests: int = Field(512, ge=1, description="requests in flight across all endpoints "
                                                                "before 429 / 503 with Retry-After")
    max_client_batch_size: int = Field(1024, ge=1, description="inputs in one request (more: 413)")
    auto_truncate: bool = Field(False, description="cut inputs longer than the largest sequence length when a "
                                                   "request does not say truncate (default: refuse them, 413)")
    request_timeout_s: float = Field(30.0, gt=0, description="per-request deadline (504 past it)")
    max_body_bytes: int = Field(1 << 20, ge=1, description="larger request bodies get 413")
    graceful_timeout_s: float = Field(30.0, ge=0, description="shutdown waits this long for in-flight work")
    allow_partial: bool = Field(False, description="keep serving the endpoints that loaded when others fail "
                                                   "(default: a failed endpoint stops the server)")
    endpoints: list[EndpointConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> ServerConfig:
        names = [e.name for e in self.endpoints]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"endpoint names must be unique, repeated: {dupes}")
        return self

    def with_default_endpoint(self) -> ServerConfig:
        """A copy that serves the default embedding model when no endpoint is configured."""
        if self.endpoints:
            return self
        default = EndpointConfig(name="embeddings", task=DEFAULT_TASK)
        return self.model_copy(update={"endpoints": [default]})


def load_config(path: str | os.PathLike, **overrides: Any) -> ServerConfig:
    """Read a YAML config file (``endpoints: [...]`` plus optional server options).

    ``overrides`` (e.g. from command-line flags) replace the file's values when not None. Relative model
    paths are resolved against the config file's directory.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInputError(f"cannot read config file {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidInputError(f"config file {path} must hold a mapping with an 'endpoints' list")
    for endpoint in raw.get("endpoints") or []:
        model = isinstance(endpoint, dict) and (endpoint.get("model") or endpoint.get("model_path"))
        if isinstance(model, str) and not Path(model).expanduser().is_absolute():
            candidate = (path.parent / model).resolve()
            if candidate.exists():
                endpoint["model" if "model" in endpoint else "model_path"] = str(candidate)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ServerConfig.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInputError(f"invalid config file {path}:\n{exc}") from exc
