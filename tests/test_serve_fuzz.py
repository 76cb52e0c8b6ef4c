"""Fuzz the server with schemathesis, driven by the server's own OpenAPI document: whatever the
generated requests hold, no answer is a 5xx. Bounded (a fixed number of examples per operation,
derandomised) and loopback only."""

from __future__ import annotations

from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

import httpx  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from zoo import shared_model  # noqa: E402

from sparsejit.serve.app import create_app  # noqa: E402
from sparsejit.serve.config import EndpointConfig, ServerConfig  # noqa: E402
from sparsejit.serve.testing import ServerThread  # noqa: E402


@pytest.fixture(scope="module")
def fuzz_server() -> Any:
    endpoints = [
        EndpointConfig(name="sentiment", task="text-classification",
                       model=str(shared_model("minilm-sentiment")),
                       batch_size=4, sequence_length=32),
        EndpointConfig(name="qa", task="qa", model=str(shared_model("minilm-squad")), batch_size=4,
                       sequence_length=64),
        EndpointConfig(name="ner", task="ner", batch_size=4, sequence_length=32),
        EndpointConfig(name="embeddings", task="embeddings", batch_size=4, sequence_length=32),
    ]
    config = ServerConfig(endpoints=endpoints, max_wait_ms=1, max_body_bytes=64 * 1024)
    with ServerThread(create_app(config)) as server:
        import time

        deadline = time.monotonic() + 300
        while httpx.get(f"{server.url}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield server


@pytest.fixture(scope="module")
def api_schema(fuzz_server: Any) -> Any:
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: Any) -> None:
    response = case.call(timeout=60)
    assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])
