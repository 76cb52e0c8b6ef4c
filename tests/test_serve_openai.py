"""OpenAI-compatible routes (/v1/embeddings, /v1/models) against a real server on loopback, driven by the
official `openai` client. Reference: the same embeddings pipeline called in-process (cosine >= 0.99999)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

import sparsejit
from sparsejit.model_wheels import minilm_dir
from sparsejit.serve.app import create_app
from sparsejit.serve.config import EndpointConfig, ServerConfig
from sparsejit.serve.testing import ServerThread

openai = pytest.importorskip("openai")

TEXTS = ["A man is eating food.", "sparsejit compiles transformers for CPUs", "short"]
LENGTHS = [16, 32]


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    config = ServerConfig(api_key="k3y", endpoints=[
        EndpointConfig(name="minilm", task="embeddings", model=str(minilm_dir()), batch_size=4,
                       sequence_length=LENGTHS)])
    with ServerThread(create_app(config)) as srv:
        srv.wait_ready()
        yield srv


@pytest.fixture(scope="module")
def pipe() -> Any:
    return sparsejit.Pipeline.create("embeddings", minilm_dir(), batch_size=4, sequence_length=LENGTHS)


@pytest.fixture(scope="module")
def client(server: Any) -> Any:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="k3y", max_retries=0)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_openai_client_gets_the_pipelines_vectors(client: Any, pipe: Any) -> None:
    reply = client.embeddings.create(model="text-embedding-3-small", input=TEXTS)  # any name: one endpoint
    got = np.array([d.embedding for d in reply.data], dtype=np.float32)
    assert [d.index for d in reply.data] == [0, 1, 2]
    assert _cosines(got, pipe(TEXTS)).min() >= 0.99999
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # modules.json ends in Normalize
    tokens = sum(len(e.ids) for e in pipe.tokenizer.encode_batch(TEXTS))
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == tokens


def test_float_and_base64_agree_and_dimensions_shorten(client: Any, pipe: Any) -> None:
    as_float = client.embeddings.create(model="minilm", input=TEXTS[0], encoding_format="float")
    as_b64 = httpx.post(f"{client.base_url}embeddings", headers={"Authorization": "Bearer k3y"},
                        json={"model": "minilm", "input": TEXTS[0], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(__import__("base64").b64decode(as_b64["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, np.array(as_float.data[0].embedding, dtype=np.float32))
    short = client.embeddings.create(model="minilm", input=TEXTS, dimensions=128)
    got = np.array([d.embedding for d in short.data], dtype=np.float32)
    assert got.shape == (3, 128)
    expected = pipe(TEXTS, dimensions=128)
    assert _cosines(got, expected).min() >= 0.99999
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # renormalised after the cut


def test_token_id_inputs(client: Any, pipe: Any) -> None:
    ids = pipe.tokenizer.encode(TEXTS[1]).ids
    reply = client.embeddings.create(model="minilm", input=[ids])
    assert _cosines(np.array([reply.data[0].embedding]), pipe([TEXTS[1]])).min() >= 0.99999
    assert reply.usage.prompt_tokens == len(ids)


def test_too_long_and_bad_inputs_are_openai_errors(client: Any) -> None:
    long_text = "word " * 200
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="minilm", input=[TEXTS[0], long_text])
    error = info.value.body
    assert error["code"] == "context_length_exceeded" and "more than 32 tokens" in error["message"]
    assert "input 1 has 202 tokens" in error["message"]
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
        client.embeddings.create(model="minilm", input=[[101, 10_000_000, 102]])
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="minilm", input="")
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client.embeddings.create(model="minilm", input="x", dimensions=100_000)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=str(client.base_url), api_key="wrong", max_retries=0).embeddings.create(
            model="minilm", input="x")


def test_models_list(client: Any) -> None:
    assert [m.id for m in client.models.list().data] == ["minilm"]
